"""The CPU backend: the whole decoder as one ONNX graph on onnxruntime, with a KV cache that is
written in place.

The graph comes from ``inference.model.cpu_graph.build_cpu_graph`` (fused onnxruntime kernels,
weights stored as the options say). It is built once per checkpoint and options and kept under
the cache directory, so a restart of the server skips dequantizing and graph building. Each
layer's keys and values live in one preallocated buffer ``[1, kv_heads, context, head_dim]``
bound as both the attention's past input and its present output (IOBinding), so a call appends
its rows in place; the cache's length is a number here, and ``truncate`` only lowers it.

``slots`` such caches may be kept (``select_slot`` picks the one that calls use), each a set of
buffers and a binding of its own, allocated when first selected: the engine keeps one prompt's
prefix in each, so that a switch between documents or clients does not prefill again.

``verify`` runs a draft's rows in one call with the logits of every row (the graph's
``logit_rows`` input), the rest of the calls with the last row's only.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .threads import physical_cores, quiet_onnxruntime

quiet_onnxruntime()
import onnxruntime as ort  # noqa: E402  (after quiet_onnxruntime)

from ..atomic import new_folder
from ..engine import Backend
from ..errors import BackendError, ModelLoadError
from ..graph_cache import budget_from_environment, evict, mark_used
from ..model.config import ModelConfig
from ..model.graph_options import GraphOptions, kv_names
from ..paths import cache_dir
from ..weights import Checkpoint

GRAPH_VERSION = "8"  # bump when build_cpu_graph or the way it is saved changes


def decoder_path(checkpoint: Checkpoint, options: GraphOptions = GraphOptions()) -> Path:
    identity = f"{GRAPH_VERSION}|{options.weights}|{checkpoint.fingerprint()}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / key / "decoder.onnx"


def ensure_decoder(checkpoint: Checkpoint, options: GraphOptions = GraphOptions()) -> Path:
    """The cached decoder graph for ``checkpoint``, built (weights as external data) if absent.

    Built in a private folder that is renamed into place whole: onnx appends external data to
    an existing file, so two servers starting at once on a shared cache, writing one folder,
    used to interleave their weights (a graph whose offsets pointed into the other's bytes:
    fluent garbage from a correct model)."""
    path = decoder_path(checkpoint, options)
    if path.exists():
        mark_used(path.parent)
        return path
    folder = path.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not path.exists():
        shutil.rmtree(folder, ignore_errors=True)  # a folder without a graph: an older, interrupted build
    import onnx  # the graph builder's: a warm start never imports it

    from ..model.cpu_graph import build_cpu_graph

    with new_folder(folder) as work:  # readers see a whole graph or none
        model = build_cpu_graph(checkpoint, options)
        onnx.save_model(model, str(work / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="decoder.weights", size_threshold=1024)
        del model
    mark_used(folder)
    evict(folder.parent, keep=folder, budget_bytes=budget_from_environment())
    return path


class CPUBackend(Backend):
    name = "cpu"

    def __init__(self, checkpoint: Checkpoint, threads: int | None = None, weights: str = "auto",
                 context: int | None = None, slots: int = 1):
        """``threads``: onnxruntime's intra-op threads (default: one per physical core);
        ``weights``: see ``GraphOptions``; ``context``: positions the KV buffers hold (default:
        the model's trained context; memory is committed only as it fills); ``slots``: KV caches
        kept (see ``select_slot``)."""
        super().__init__()
        self.config: ModelConfig = checkpoint.config
        try:
            self.options = GraphOptions(weights)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.max_context = min(context or self.config.max_positions, self.config.max_positions)
        self.vocab_size = self.config.vocab_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()
        options.inter_op_num_threads = 1
        # Spinning threads burn a core for a while after each call: halves decode speed when the
        # editor or a build runs beside the server (measured in issue 12), so they sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = ensure_decoder(checkpoint, self.options)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(f"{path}: onnxruntime cannot load the decoder graph ({exc}); delete it to rebuild") from exc
        self._learned_positions = "position_ids" in {i.name for i in self._session.get_inputs()}
        if slots < 1:
            raise ModelLoadError(f"a backend needs at least one KV-cache slot, not {slots}")
        self.slots = slots
        self._slot_caches: list[tuple[list[ort.OrtValue], ort.IOBinding] | None] = [None] * slots
        self._lengths = [0] * slots
        self._logit_rows = [1] * slots  # rows of logits each slot's bound output holds
        self._slot = 0
        self._kv, self._binding = self._slot_cache(0)
        self._length = 0

    def _slot_cache(self, index: int) -> tuple[list[ort.OrtValue], ort.IOBinding]:
        """Slot ``index``'s buffers and binding, allocated on first use."""
        cache = self._slot_caches[index]
        if cache is None:
            shape = [1, self.config.num_kv_heads, self.max_context, self.config.head_dim]
            # One buffer per layer and kind, allocated by onnxruntime and never copied.
            kv = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cpu", 0)
                  for _ in range(2 * self.config.num_layers)]
            cache = self._slot_caches[index] = (kv, self.bind_buffers(kv))
        return cache

    def select_slot(self, index: int) -> None:
        if not 0 <= index < self.slots:
            raise BackendError(f"slot {index} does not exist (this backend keeps {self.slots})")
        self._lengths[self._slot] = self._length
        self._slot = index
        self._kv, self._binding = self._slot_cache(index)
        self._length = self._lengths[index]

    def bind_buffers(self, kv: list[ort.OrtValue]) -> ort.IOBinding:
        """A binding of the session with each layer's buffer as both its past and its present."""
        binding = self._session.io_binding()
        for i in range(self.config.num_layers):
            past_k, past_v, present_k, present_v = kv_names(i)
            binding.bind_ortvalue_input(past_k, kv[2 * i])
            binding.bind_ortvalue_input(past_v, kv[2 * i + 1])
            binding.bind_ortvalue_output(present_k, kv[2 * i])
            binding.bind_ortvalue_output(present_v, kv[2 * i + 1])
        binding.bind_output("logits")
        return binding

    @property
    def cached_length(self) -> int:
        return self._length

    def truncate(self, length: int) -> None:
        """Rows past ``length`` stay in the buffers and are overwritten by the next call."""
        self._length = min(self._length, max(length, 0))

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        return self._run(token_ids, 1)[0]

    def verify(self, token_ids: Sequence[int]) -> list[int]:
        """One call over all the rows, each row's argmax."""
        return [int(t) for t in np.argmax(self._run(token_ids, len(token_ids)), axis=-1)]

    def _run(self, token_ids: Sequence[int], logit_rows: int) -> np.ndarray:
        """Append ``token_ids``; the logits [logit_rows, vocab] of the last ``logit_rows``."""
        n = len(token_ids)
        if n == 0:
            raise BackendError("forward needs at least one token")
        if self._length + n > self.max_context:
            raise BackendError(f"{self._length + n} positions exceed the context of {self.max_context}")
        total = self._length + n
        binding = self._binding
        binding.bind_cpu_input("input_ids", np.asarray([token_ids], np.int64))
        if self._learned_positions:
            binding.bind_cpu_input("position_ids", np.arange(self._length, total, dtype=np.int64)[None])
        binding.bind_cpu_input("seqlens_k", np.array([total - 1], np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        binding.bind_cpu_input("logit_rows", np.array([logit_rows], np.int64))
        if logit_rows != self._logit_rows[self._slot]:  # onnxruntime keeps the last call's output buffer and shape
            binding.bind_output("logits")
            self._logit_rows[self._slot] = logit_rows
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            raise BackendError(f"onnxruntime failed: {exc}") from exc
        self._length = total
        self.tokens_fed += n
        return binding.get_outputs()[-1].numpy().copy()  # onnxruntime reuses the logits buffer
