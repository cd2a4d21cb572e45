"""Write a file or a folder so that readers see the whole old one or the whole new one, never a half.

Several servers may start at once on one cache (a team box, two editors), and a build may be killed
halfway (Ctrl-C, a full disk). So every artifact is written under a temporary name that is private to
this process, beside its target (the same file system, so the rename is atomic), and renamed only
when it is complete; on any error the temporary is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _private_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.partial")


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary path to write ``target``'s new content to; it replaces ``target`` when the block ends
    without an error, and is removed when it raises."""
    target = Path(target)
    tmp = _private_name(target)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> Path:
    """``target.write_text(text)``, all or nothing."""
    with replacing(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: Path, data: bytes) -> Path:
    """``target.write_bytes(data)``, all or nothing."""
    with replacing(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


@contextmanager
def new_folder(target: Path) -> Iterator[Path]:
    """A fresh temporary folder to fill; it becomes ``target`` when the block ends without an error.

    A folder cannot replace another atomically, so when ``target`` appears meanwhile (another process
    finished the same build first) its copy is kept and ours is dropped: both were built from the same
    inputs. Without that, a failed rename is a real error."""
    target = Path(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield work
        try:
            os.rename(work, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
