"""Shared by the real-editor tests (Neovim, VS Code): the server command they start."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest


def server_command() -> list[str]:
    """The real server from this environment ($WIZARDCODER_SERVER_COMMAND, a JSON list, overrides it)."""
    if os.environ.get("WIZARDCODER_SERVER_COMMAND"):
        return json.loads(os.environ["WIZARDCODER_SERVER_COMMAND"])
    exe = Path(sys.executable).parent / "wizardcoder-tpu"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: `pip install -e .` first")
    return [str(exe), "serve", "--stdio"]


def private_cache(root: Path) -> Path:
    """A cache folder of the test's own (``$WIZARDCODER_TPU_CACHE``), so that the acceptance
    statistics a test session writes are its alone; everything else in it (the models, the built
    graphs) links to the shared cache, so nothing is fetched or built twice."""
    from wizardcoder_tpu.inference.paths import cache_dir

    shared = cache_dir()
    private = root / "cache"
    private.mkdir(parents=True, exist_ok=True)
    for entry in shared.iterdir():
        if entry.name not in ("stats", "server.log") and not (private / entry.name).exists():
            (private / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return private
