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
