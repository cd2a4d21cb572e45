"""The CPU backend: the whole decoder as one dynamic-shape ONNX graph on onnxruntime.

The graph comes from ``inference.model.decoder.build_cpu_decoder`` (the same layer definition the
TPU pieces use). It is built once per checkpoint and kept under the cache directory, so a
restart of the server skips dequantizing and graph building. The KV cache stays in onnxruntime
values between calls (IOBinding), fed back without a copy through numpy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from .threads import physical_cores, quiet_onnxruntime

quiet_onnxruntime()
import onnxruntime as ort  # noqa: E402  (after quiet_onnxruntime)

from ..engine import Backend
from ..errors import BackendError, ModelLoadError
from ..model.config import ModelConfig
from ..model.decoder import build_cpu_decoder, kv_names
from ..paths import cache_dir
from ..weights import Checkpoint

GRAPH_VERSION = "3"  # bump when build_cpu_decoder or the way it is saved changes


def decoder_path(checkpoint: Checkpoint) -> Path:
    key = hashlib.sha256(f"{GRAPH_VERSION}|{checkpoint.fingerprint()}".encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / key / "decoder.onnx"


def ensure_decoder(checkpoint: Checkpoint) -> Path:
    """The cached decoder graph for ``checkpoint``, built (weights as external data) if absent.

    Built in a private folder that is renamed into place whole: onnx appends external data to
    an existing file, so two servers starting at once on a shared cache, writing one folder,
    used to interleave their weights (a graph whose offsets pointed into the other's bytes:
    fluent garbage from a correct model)."""
    path = decoder_path(checkpoint)
    if path.exists():
        return path
    folder = path.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not path.exists():
        shutil.rmtree(folder, ignore_errors=True)  # a folder without a graph: an older, interrupted build
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model = build_cpu_decoder(checkpoint.config, checkpoint.tensor)
        onnx.save_model(model, str(work / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="decoder.weights", size_threshold=1024)
        del model
        try:
            os.rename(work, folder)  # readers see a whole graph or none
        except OSError:
            if not path.exists():  # not another builder's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


class CPUBackend(Backend):
    name = "cpu"

    def __init__(self, checkpoint: Checkpoint, threads: int | None = None):
        super().__init__()
        self.config: ModelConfig = checkpoint.config
        self.max_context = self.config.max_positions
        self.vocab_size = self.config.vocab_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        # Spinning threads burn a core for a while after each call: halves decode speed when the
        # editor or a build runs beside the server (measured in issue 12), so they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = ensure_decoder(checkpoint)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{path}: onnxruntime cannot load the decoder graph ({exc}); delete it to rebuild") from exc
        self._empty = np.zeros((1, 0, self.config.num_kv_heads, self.config.head_dim), np.float32)
        self._kv = self._empty_cache()
        self._length = 0

    @property
    def cached_length(self) -> int:
        return self._length

    def truncate(self, length: int) -> None:
        if length >= self._length:
            return
        if length == 0:
            self._kv = self._empty_cache()
        else:
            self._kv = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :length])) for v in self._kv]
        self._length = length

    def _empty_cache(self) -> list[ort.OrtValue]:
        return [ort.OrtValue.ortvalue_from_numpy(self._empty)] * (2 * self.config.num_layers)

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        n = len(token_ids)
        if n == 0:
            raise BackendError("forward needs at least one token")
        if self._length + n > self.max_context:
            raise BackendError(f"{self._length + n} positions exceed the context of {self.max_context}")
        binding = self._session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([token_ids], np.int64))
        binding.bind_cpu_input("position_ids", np.arange(self._length, self._length + n, dtype=np.int64)[None])
        for i in range(self.config.num_layers):
            past_k, past_v, present_k, present_v = kv_names(i)
            binding.bind_ortvalue_input(past_k, self._kv[2 * i])
            binding.bind_ortvalue_input(past_v, self._kv[2 * i + 1])
            binding.bind_output(present_k)
            binding.bind_output(present_v)
        binding.bind_output("logits")
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        outputs = binding.get_outputs()
        self._kv = outputs[:-1]
        self._length += n
        self.tokens_fed += n
        return outputs[-1].numpy()[0]
