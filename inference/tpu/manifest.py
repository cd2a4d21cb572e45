"""``manifest.json``: what an export holds, read by ``compile``, the C++ engine and the tests.

It records the architecture and config, the static lengths (N = ``seq_len``, K = ``chunk_len``),
every piece with its inputs and outputs (names, dtypes, shapes: ``docs/tpu-pieces.md``), and the
sha256 of every file, so that a compile can key its cache on content without rehashing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import write_text
from ..errors import InferenceError
from ..model.config import ModelConfig

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class ManifestError(InferenceError):
    """An export directory without a usable manifest."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Manifest:
    format: int
    export_key: str
    architecture: str
    config: dict
    seq_len: int
    chunk_len: int
    mask_value: float
    source: dict
    pieces: list[dict]
    files: dict[str, dict]  # file name → {"sha256", "bytes"}
    tokenizer: str | None
    kv_layout: str = "[1, seq, kv_heads, head_dim], keys after RoPE"
    prefill_chunks: list[int] = field(default_factory=list)  # rows of the block_chunk{R}_{i} sets
    compiled: dict = field(default_factory=dict)  # filled in the copy beside a bmodel

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config)

    def piece(self, name: str) -> dict:
        for p in self.pieces:
            if p["name"] == name:
                return p
        raise KeyError(name)

    def save(self, directory: Path, name: str = MANIFEST) -> Path:
        return write_text(directory / name, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "Manifest":
        directory = Path(directory)
        path = directory / MANIFEST if directory.is_dir() else directory
        if not path.exists():
            hint = " (run `wizardcoder-tpu export` first)" if not directory.is_file() else ""
            raise ManifestError(f"{path}: no manifest{hint}")
        try:
            data = json.loads(path.read_text())
            manifest = cls(**data)
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"{path}: not a wizardcoder-tpu manifest ({exc})") from exc
        if manifest.format != MANIFEST_FORMAT:
            raise ManifestError(f"{path}: manifest format {manifest.format}, this tool reads {MANIFEST_FORMAT}; re-export")
        return manifest

    @classmethod
    def load_if_current(cls, directory: Path, export_key: str) -> "Manifest | None":
        """The manifest of a finished export with the same inputs whose files are all present."""
        try:
            manifest = cls.load(directory)
        except ManifestError:
            return None
        if manifest.export_key != export_key:
            return None
        if any(not (directory / f).exists() or (directory / f).stat().st_size != m["bytes"]
               for f, m in manifest.files.items()):
            return None
        return manifest

    def verify_sizes(self, directory: Path) -> None:
        """Cheap integrity check before a compile: every file present with its recorded size."""
        for name, meta in self.files.items():
            path = directory / name
            if not path.exists():
                raise ManifestError(f"{path} is missing; re-export")
            if path.stat().st_size != meta["bytes"]:
                raise ManifestError(f"{path} has {path.stat().st_size} bytes, the manifest says {meta['bytes']}; re-export")
