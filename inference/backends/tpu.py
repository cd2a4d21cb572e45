"""The TPU backend: the C++ bmrt engine (``wizardcoder_tpu._bmrt``, csrc/) behind ``Backend``.

The KV cache lives on the device; the argmax runs on the device (the ``lm_head`` net) and the
decode loop runs in C++ without the GIL, so per token only its id comes back to Python. A model
is a directory from ``wizardcoder-tpu compile``: one ``.bmodel`` with ``manifest.json`` and
``tokenizer.json`` beside it (docs/tpu-pieces.md).

The Sophgo libraries are found at run time, first hit wins: an explicit directory
(``lib_dir`` or ``$WIZARDCODER_TPU_LIB_DIR``), ``$LIBSOPHON_DIR/lib``,
``/opt/sophon/libsophon-current/lib`` (PCIe and SoC installs), then tpu-mlir's cmodel simulator
libraries (an importable ``tpu_mlir``, or the venv that ``wizardcoder-tpu compile`` keeps in the
cache). No library or no device raises ``TPUUnavailableError``: the server reports it and can
fall back to the CPU.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from ..engine import Backend, Engine
from ..errors import BackendError, ModelLoadError
from ..paths import cache_dir
from ..tokenizer import Tokenizer

SYSTEM_LIBSOPHON = "/opt/sophon/libsophon-current/lib"


class TPUUnavailableError(ModelLoadError):
    """No Sophgo runtime or no device: the model is fine, this machine cannot run it."""


def _module() -> ModuleType:
    try:
        from wizardcoder_tpu import _bmrt
    except ImportError as exc:
        raise TPUUnavailableError(f"the C++ engine (wizardcoder_tpu._bmrt) is not built into this install ({exc}); "
                                  "reinstall with `pip install .` and a C++ compiler present") from exc
    return _bmrt


def tpu_mlir_lib_dirs() -> list[str]:
    """tpu-mlir's ``lib/`` folders holding the cmodel builds of libbmlib/libbmrt."""
    found = []
    spec = importlib.util.find_spec("tpu_mlir") if _importable("tpu_mlir") else None
    if spec and spec.submodule_search_locations:
        found += [str(Path(p) / "lib") for p in spec.submodule_search_locations]
    pattern = str(cache_dir() / "tpu-mlir-*" / "venv" / "lib" / "python3*" / "site-packages" / "tpu_mlir" / "lib")
    found += sorted(glob.glob(pattern), reverse=True)  # the newest tpu-mlir first
    return found


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def library_dirs(lib_dir: str | os.PathLike | None = None) -> list[str]:
    """Where to look for libbmlib.so + libbmrt.so, in order."""
    dirs = []
    explicit = lib_dir or os.environ.get("WIZARDCODER_TPU_LIB_DIR")
    if explicit:
        dirs.append(str(explicit))
    if os.environ.get("LIBSOPHON_DIR"):
        dirs.append(os.path.join(os.environ["LIBSOPHON_DIR"], "lib"))
    dirs.append(SYSTEM_LIBSOPHON)
    dirs += tpu_mlir_lib_dirs()
    return dirs


def load_libraries(lib_dir: str | os.PathLike | None = None) -> str:
    """Load the Sophgo runtime once per process; returns the directory it came from."""
    bmrt = _module()
    try:
        return bmrt.load_libraries(library_dirs(lib_dir))
    except bmrt.LibraryError as exc:
        raise TPUUnavailableError(str(exc)) from None


class TPUBackend(Backend):
    name = "tpu"

    def __init__(self, bmodel: str | os.PathLike, devices: Sequence[int] = (0,), lib_dir: str | None = None,
                 stop_ids: Iterable[int] = ()):
        self._fed_base = 0
        super().__init__()
        self.library_dir = load_libraries(lib_dir)
        bmrt = _module()
        try:
            self._engine = bmrt.Engine(str(bmodel), list(devices))
        except bmrt.DeviceError as exc:
            raise TPUUnavailableError(f"{bmodel}: {exc}") from None
        except bmrt.Error as exc:
            raise ModelLoadError(f"{bmodel}: {exc}") from None
        self.path = Path(bmodel)
        self.max_context = self._engine.seq_len
        self.vocab_size = self._engine.vocab_size
        self.stop_ids = frozenset(stop_ids)  # end the C++ loop without a round trip through Python

    # Backend ------------------------------------------------------------------------------
    @property
    def tokens_fed(self) -> int:  # counted in C++: real tokens through the blocks
        return self._engine.stats.tokens_fed - self._fed_base if hasattr(self, "_engine") else 0

    @tokens_fed.setter
    def tokens_fed(self, value: int) -> None:  # Backend.__init__ sets 0; a reset moves the base
        self._fed_base = (self._engine.stats.tokens_fed if hasattr(self, "_engine") else 0) - value

    @property
    def cached_length(self) -> int:
        return self._engine.length

    def truncate(self, length: int) -> None:
        self._call(self._engine.truncate, length)

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        return np.frombuffer(self._call(self._engine.feed_logits, list(token_ids)), np.float32)

    def greedy_step(self, token_ids: Sequence[int]) -> int:
        return self._call(self._engine.feed_greedy, list(token_ids))

    def greedy_loop(self, first_token: int, max_steps: int, on_token: Callable[[int], bool]) -> None:
        self.generate(first_token, max_steps, on_token)

    def close(self) -> None:
        if hasattr(self, "_engine"):
            self._engine.close()

    # Beyond Backend -----------------------------------------------------------------------
    def generate(self, first_token: int, max_steps: int, on_token: Callable[[int], bool] | None = None,
                 stop_ids: Iterable[int] = ()) -> tuple[list[int], str]:
        """The C++ loop: feed ``first_token`` and each greedy token, ``max_steps`` at most; stops
        after a token in ``stop_ids`` (plus the backend's own, e.g. EOS, or a tokenizer's
        ``newline_ids`` for single-line completion), when ``on_token`` returns False, or on
        ``cancel()``. Returns (tokens, reason)."""
        stops = list(self.stop_ids | frozenset(stop_ids))
        return self._call(self._engine.generate, first_token, max_steps, stops, on_token)

    def cancel(self) -> None:
        """Stop a running ``generate`` before its next step; safe from any thread."""
        self._engine.cancel()

    @property
    def stats(self):
        return self._engine.stats

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except _module().Error as exc:
            raise BackendError(f"TPU engine: {exc}") from None


def find_bmodel(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a .bmodel, else the one .bmodel inside the directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.bmodel"))
        if len(found) != 1:
            raise ModelLoadError(f"{path}: expected one .bmodel in the directory, found {len(found)}; "
                                 "run `wizardcoder-tpu compile` or pass the file")
        return found[0]
    if not path.exists():
        raise ModelLoadError(f"{path}: no such bmodel")
    return path


def read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({exc})") from exc


def load_tpu_engine(path: str | os.PathLike, lib_dir: str | None = None,
                    devices: Sequence[int] | None = None) -> Engine:
    """An Engine over the compiled model at ``path`` (a .bmodel or its directory)."""
    bmodel = find_bmodel(path)
    manifest = read_manifest(bmodel.parent)
    tokenizer_file = bmodel.parent / (manifest.get("tokenizer") or "tokenizer.json")
    if not tokenizer_file.exists():
        raise ModelLoadError(f"{tokenizer_file}: missing; the compiled model directory needs its tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_file)
    if devices is None:
        count = int(manifest.get("compiled", {}).get("num_device", 1) or 1)
        devices = list(range(count))
    backend = TPUBackend(bmodel, devices=devices, lib_dir=lib_dir, stop_ids=[tokenizer.eos_id])
    return Engine(backend, tokenizer, model_name=bmodel.stem)
