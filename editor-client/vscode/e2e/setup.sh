#!/usr/bin/env bash
# Installs what the VS Code end-to-end test needs and prints the paths as KEY=VALUE lines:
#   CODE_SERVER_ENTRY  node entry point of code-server (a real VS Code 1.100.3 server)
#   CHROMIUM           the real chromium binary (not Debian's shell wrapper)
#
# code-server is cached under ~/.cache/wizardcoder-tpu/editors/, keyed by its version and the
# Node ABI, so a second run is a few milliseconds. Chromium and ripgrep come from Debian (apt).
# Facts behind each step: ../../../../shared/README.md, section "Editors".
set -euo pipefail

CODE_SERVER_VERSION=4.100.3          # the newest code-server needs Node 24; this one runs on Node 20
NODE_ABI=$(node -p process.versions.modules)
CACHE_ROOT=${WIZARDCODER_CACHE:-$HOME/.cache/wizardcoder-tpu}/editors
CS_DIR=$CACHE_ROOT/code-server-$CODE_SERVER_VERSION-node$NODE_ABI
STAMP=$CS_DIR/.complete

log() { echo "[setup] $*" >&2; }

# --- Debian packages: chromium (the browser), ripgrep (VS Code's search), libkrb5-dev (kerberos build)
need=()
[ -x /usr/lib/chromium/chromium ] || need+=(chromium)
command -v rg >/dev/null || need+=(ripgrep)
dpkg -s libkrb5-dev >/dev/null 2>&1 || need+=(libkrb5-dev)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  if ! $SUDO apt-get install -y --no-install-recommends "${need[@]}" >&2; then
    $SUDO apt-get update >&2
    $SUDO apt-get install -y --no-install-recommends "${need[@]}" >&2
  fi
fi

# --- code-server from npm, with its native modules rebuilt for this Node
if [ ! -f "$STAMP" ]; then
  log "installing code-server $CODE_SERVER_VERSION into $CS_DIR"
  rm -rf "$CS_DIR"; mkdir -p "$CS_DIR"
  export npm_config_yes=true npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
  (cd "$CS_DIR" && echo '{"name":"wizardcoder-tpu-editors","private":true}' > package.json \
     && npm install --no-save --ignore-scripts "code-server@$CODE_SERVER_VERSION" >&2 \
     && npm rebuild argon2 >&2)
  CS=$CS_DIR/node_modules/code-server
  (cd "$CS/lib/vscode" && npm install --omit=dev --ignore-scripts >&2 \
     && npm rebuild @parcel/watcher @vscode/spdlog kerberos native-watchdog node-pty @vscode/deviceid >&2)
  # @vscode/ripgrep's postinstall downloads rg from GitHub; use Debian's instead.
  mkdir -p "$CS/lib/vscode/node_modules/@vscode/ripgrep/bin"
  cp "$(command -v rg)" "$CS/lib/vscode/node_modules/@vscode/ripgrep/bin/rg"
  # What code-server's own postinstall would have made.
  ln -sfn node_modules "$CS/lib/vscode/node_modules.asar"
  ln -sfn code-linux.sh "$CS/lib/vscode/bin/remote-cli/code-server"
  ln -sfn browser-linux.sh "$CS/lib/vscode/bin/helpers/browser.sh"
  (cd "$CS/lib/vscode/extensions" && npm install --omit=dev --ignore-scripts >&2)
  touch "$STAMP"
  log "code-server ready"
fi

echo "CODE_SERVER_ENTRY=$CS_DIR/node_modules/code-server/out/node/entry.js"
echo "CHROMIUM=/usr/lib/chromium/chromium"
