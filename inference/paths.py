"""Where derived artifacts live: ``$WIZARDCODER_TPU_CACHE`` or ``~/.cache/wizardcoder-tpu``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("WIZARDCODER_TPU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "wizardcoder-tpu")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
