"""Keep the folder of built decoder graphs from filling the disk.

Every graph is keyed by the graph version, the weight setting and the checkpoint, so an upgrade
(a new ``GRAPH_VERSION``), a new weight setting or a user's own checkpoints each leave a graph
behind: 0.6 GB for the default model at ``int8``, 2 GB at ``f32``. Nothing ever read them again,
and a developer's cache had grown to 19 GB. So each load marks its graph as used, and each build
removes the least recently used graphs until the folder is under its budget again.

Graphs used within the last ``IN_USE_S`` are never removed: another server on the same cache (a
second editor, a team box) may have one open, and onnxruntime maps the weights file.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

BUDGET_BYTES = 8 << 30  # the default model at every weight setting, with room for a few more
IN_USE_S = 24 * 3600
USED = ".used"  # a graph folder's mark: its modification time is the graph's last use


def mark_used(folder: Path) -> None:
    """Record that the graph in ``folder`` was loaded now."""
    try:
        (folder / USED).touch()
    except OSError as exc:  # a read-only cache still serves
        log.debug("cannot mark %s as used: %s", folder, exc)


def last_use(folder: Path) -> float:
    for path in (folder / USED, folder):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def folder_bytes(folder: Path) -> int:
    total = 0
    for entry in folder.iterdir():
        try:
            total += entry.stat().st_size
        except OSError:
            continue
    return total


def evict(root: Path, keep: Path, budget_bytes: int = BUDGET_BYTES, now: float | None = None) -> list[Path]:
    """Remove graph folders under ``root``, least recently used first, until what is left fits in
    ``budget_bytes``; never ``keep`` nor one used within ``IN_USE_S``. The folders removed."""
    now = time.time() if now is None else now
    folders = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")]
    sizes = {f: folder_bytes(f) for f in folders}
    total = sum(sizes.values())
    removed = []
    for folder in sorted(folders, key=last_use):
        if total <= budget_bytes:
            break
        if folder == keep or now - last_use(folder) < IN_USE_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            total -= sizes[folder]
            removed.append(folder)
    if removed:
        log.info("removed %d unused decoder graphs (%s); %.1f GB left in %s", len(removed),
                 ", ".join(f.name for f in removed), total / 1e9, root)
    return removed


def budget_from_environment() -> int:
    """``WIZARDCODER_TPU_GRAPH_CACHE_GB`` when set (a shared box may keep more)."""
    value = os.environ.get("WIZARDCODER_TPU_GRAPH_CACHE_GB")
    if not value:
        return BUDGET_BYTES
    try:
        return int(float(value) * (1 << 30))
    except ValueError:
        log.warning("WIZARDCODER_TPU_GRAPH_CACHE_GB=%r is not a number; keeping %d GB", value, BUDGET_BYTES >> 30)
        return BUDGET_BYTES
