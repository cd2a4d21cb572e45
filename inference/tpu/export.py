"""``wizardcoder-tpu export``: a checkpoint → static ONNX pieces + manifest + tokenizer.

Bounded memory: pieces are exported one weight group at a time (the globals, then each layer).
A group's weights are read from the checkpoint one tensor at a time, written once to
``{group}.weights``, and referenced from every piece of the group as ONNX external data — the
prefill, decode and chunk blocks of a layer share one copy on disk. So a 15B checkpoint needs
about one layer (1.5 GB for WizardCoder-15B in float32) in memory, and its f32 size on disk once.

Resumable: a finished group leaves a stamp keyed by the export's inputs; a rerun skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..atomic import replacing
from ..errors import InferenceError, ModelLoadError, TokenizerError
from ..model.config import SUPPORTED_ARCHS
from ..model.decoder import MASK_VALUE
from ..weights import Checkpoint, open_checkpoint
from .manifest import MANIFEST, MANIFEST_FORMAT, Manifest, sha256_file
from .pieces import DEFAULT_CHUNK, PieceSpec, build_piece, piece_specs

EXPORT_VERSION = "4"  # bump when what export writes changes
ALIGN = 64  # bytes; external tensors start aligned so that readers may map them


class ExportError(InferenceError):
    """The export cannot proceed: bad arguments or an unusable checkpoint."""


@dataclass
class _GroupWeights:
    """One weights file being written: each tensor once, whichever piece asks first."""

    path: Path
    read: Callable[[str], np.ndarray]
    index: dict[str, tuple[int, int, tuple[int, ...]]]

    def fetch(self, name: str) -> np.ndarray:
        if name not in self.index:
            array = np.ascontiguousarray(self.read(name), dtype=np.float32)
            with open(self.path, "ab") as f:
                offset = f.seek(0, os.SEEK_END)
                pad = -offset % ALIGN
                f.write(b"\0" * pad)
                f.write(array.tobytes())
            self.index[name] = (offset + pad, array.nbytes, array.shape)
            return array
        offset, _, shape = self.index[name]
        return np.memmap(self.path, np.float32, "r", offset, shape)  # the file already has it: no second copy


def _externalize(model: onnx.ModelProto, weights: _GroupWeights, location: str) -> None:
    """Point each checkpoint initializer at its bytes in the shared weights file ``location``."""
    for tensor in model.graph.initializer:
        if tensor.name in weights.index:
            offset, length, _ = weights.index[tensor.name]
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value


def check_arguments(ck: Checkpoint, seq_len: int, chunk_len: int, prefill_chunks: Sequence[int] = ()) -> None:
    c = ck.config
    if c.arch not in SUPPORTED_ARCHS:
        raise ExportError(f"{ck.path}: unknown architecture {c.arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}")
    if seq_len < 1:
        raise ExportError(f"--seq-len must be at least 1, not {seq_len}")
    if seq_len > c.max_positions:
        raise ExportError(f"--seq-len {seq_len} is above the model's maximum of {c.max_positions} positions ({ck.path})")
    if not 1 <= chunk_len <= seq_len:
        raise ExportError(f"--chunk-len must be between 1 and --seq-len ({seq_len}), not {chunk_len}")
    for rows in prefill_chunks:
        if not 2 <= rows <= seq_len or rows == chunk_len:
            raise ExportError(f"--prefill-chunks: {rows} rows must be between 2 and --seq-len ({seq_len}) and differ "
                              f"from --chunk-len ({chunk_len})")
    if sorted(set(prefill_chunks)) != list(prefill_chunks):
        raise ExportError(f"--prefill-chunks must be distinct and ascending, not {list(prefill_chunks)}")


def export_key(ck: Checkpoint, seq_len: int, chunk_len: int, prefill_chunks: Sequence[int] = ()) -> str:
    extra = f"|{','.join(map(str, prefill_chunks))}" if prefill_chunks else ""  # earlier exports keep their key
    return hashlib.sha256(f"{EXPORT_VERSION}|{ck.fingerprint()}|{seq_len}|{chunk_len}{extra}".encode()).hexdigest()


def export(model: str | Path, seq_len: int, out: str | Path, chunk_len: int = DEFAULT_CHUNK,
           log: Callable[[str], None] | None = None, prefill_chunks: Sequence[int] = ()) -> Manifest:
    """Export ``model`` (a .gguf file or a Hugging Face directory) into ``out``. ``prefill_chunks``:
    further chunk sizes (rows) through which the engine prefills a prompt instead of the N-row
    block (docs/tpu-pieces.md)."""
    say = log or (lambda m: print(f"export: {m}", file=sys.stderr, flush=True))
    try:
        ck = open_checkpoint(model)
    except ValueError as exc:  # a config the model code rejects (an unknown architecture, say)
        raise ExportError(f"{model}: {exc}") from exc
    prefill_chunks = tuple(prefill_chunks)
    check_arguments(ck, seq_len, chunk_len, prefill_chunks)
    c = ck.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = export_key(ck, seq_len, chunk_len, prefill_chunks)
    existing = Manifest.load_if_current(out, key)
    if existing is not None:
        say(f"{out / MANIFEST} is current; nothing to do")
        return existing
    (out / MANIFEST).unlink(missing_ok=True)  # a manifest present means a complete export

    specs = piece_specs(c, seq_len, chunk_len, prefill_chunks)
    groups: dict[str, list[PieceSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.group, []).append(spec)
    files: dict[str, dict] = {}
    started = time.monotonic()
    for n, (group, members) in enumerate(groups.items(), 1):
        t0 = time.monotonic()
        stamp = out / f".{group}.done"
        names = [f"{s.name}.onnx" for s in members] + [f"{group}.weights"]
        done = _read_stamp(stamp, key, out, names)
        if done is None:
            done = _export_group(ck, group, members, out, seq_len, chunk_len)
            stamp.write_text(json.dumps({"key": key, "files": done}))
            say(f"[{n}/{len(groups)}] {group}: {', '.join(s.name for s in members)} ({time.monotonic() - t0:.1f} s)")
        else:
            say(f"[{n}/{len(groups)}] {group}: current, skipped")
        files |= done

    tokenizer = None
    try:
        ck.tokenizer().save(out / "tokenizer.json")
        tokenizer = "tokenizer.json"
        files[tokenizer] = {"sha256": sha256_file(out / tokenizer), "bytes": (out / tokenizer).stat().st_size}
    except (ModelLoadError, TokenizerError) as exc:
        say(f"warning: no tokenizer exported ({exc}); the engine needs one beside the bmodel")

    manifest = Manifest(
        format=MANIFEST_FORMAT, export_key=key, architecture=c.arch, config=c.to_dict(), seq_len=seq_len,
        chunk_len=chunk_len, prefill_chunks=list(prefill_chunks), mask_value=MASK_VALUE, source={"path": str(ck.path), "fingerprint": ck.fingerprint()},
        pieces=[s.to_dict() | {"onnx": f"{s.name}.onnx", "weights": f"{s.group}.weights"} for s in specs],
        files=files, tokenizer=tokenizer)
    manifest.save(out)
    say(f"{len(specs)} pieces in {out} ({time.monotonic() - started:.1f} s)")
    return manifest


def _read_stamp(stamp: Path, key: str, out: Path, names: list[str]) -> dict | None:
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files", {})
    if data.get("key") != key or sorted(files) != sorted(names):
        return None
    if any(not (out / f).exists() or (out / f).stat().st_size != files[f]["bytes"] for f in names):
        return None
    return files


def _export_group(ck: Checkpoint, group: str, members: list[PieceSpec], out: Path, seq_len: int,
                  chunk_len: int) -> dict[str, dict]:
    weights_path = out / f"{group}.weights"
    written: dict[str, dict] = {}
    with replacing(weights_path) as tmp_weights:
        tmp_weights.touch()
        weights = _GroupWeights(tmp_weights, ck.tensor, {})
        for spec in members:
            model = build_piece(spec, ck.config, weights.fetch, seq_len, chunk_len)
            _externalize(model, weights, weights_path.name)  # the final name, not the .partial being written
            path = out / f"{spec.name}.onnx"
            data = model.SerializeToString()
            path.write_bytes(data)
            written[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            del model, data
    written[weights_path.name] = {"sha256": sha256_file(weights_path), "bytes": weights_path.stat().st_size}
    return written
