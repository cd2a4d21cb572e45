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

Sophgo's runtime sometimes ends the process instead of returning an error (tpu_probe.py lists
when), so the device is opened in a child process first, and a bmodel file is loaded there once.

A device that goes away under the backend (its handle closed while a request runs) fails that
request with a BackendError. Once the engine has started over (``truncate(0)``, as every request
after the failure does) the next call that feeds tokens opens the device and loads the bmodel
again, so a server serves its next request, or says why it cannot. A call in the middle of a
request never reopens: its cached prefix would be gone.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from ..engine import Backend, Engine
from ..errors import BackendError, ModelLoadError
from ..native_stdout import protect_stdout
from ..paths import cache_dir
from ..tokenizer import Tokenizer
from .tpu_probe import PROBE_MARK, STEP_DEVICES, STEP_LOADED

log = logging.getLogger(__name__)
SYSTEM_LIBSOPHON = "/opt/sophon/libsophon-current/lib"
# Loading a 15B bmodel onto a PCIe card takes minutes; the cmodel's tiny test models a second.
PROBE_TIMEOUT_S = float(os.environ.get("WIZARDCODER_TPU_PROBE_TIMEOUT", "900"))


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
    """Load the Sophgo runtime once per process; returns the directory it came from. From here on
    the runtime's prints to descriptor 1 go to stderr (``native_stdout``; the console script has
    done it already, this covers a program that uses the backend directly)."""
    protect_stdout()
    bmrt = _module()
    try:
        return bmrt.load_libraries(library_dirs(lib_dir))
    except bmrt.LibraryError as exc:
        raise TPUUnavailableError(str(exc)) from None


def probe(bmodel: Path, devices: Sequence[int], library_dir: str) -> None:
    """Open ``devices`` in a child process first, and load ``bmodel`` there too the first time this
    file is seen (tpu_probe.py says why). Raises TPUUnavailableError when the device cannot be
    opened, ModelLoadError when the bmodel cannot be loaded; returns when both are safe."""
    marker = cache_dir() / "tpu-probed" / _probe_key(bmodel, devices, library_dir)
    load = not marker.exists()
    command = [sys.executable, "-m", "wizardcoder_tpu.inference.backends.tpu_probe", "--lib-dir", library_dir,
               "--devices", ",".join(str(d) for d in devices)] + (["--bmodel", str(bmodel)] if load else [])
    doing = "opening the device and loading the bmodel" if load else "opening the device"
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise TPUUnavailableError(f"{doing} took over {PROBE_TIMEOUT_S:.0f} s (in a child process); "
                                  "set WIZARDCODER_TPU_PROBE_TIMEOUT for a slower device") from None
    marks = [json.loads(line[len(PROBE_MARK):]) for line in done.stdout.splitlines() if line.startswith(PROBE_MARK)]
    steps = {m.get("step") for m in marks}
    for mark in marks:
        if "error" in mark:
            if mark["error"] in ("LibraryError", "DeviceError"):
                raise TPUUnavailableError(mark["message"])
            raise ModelLoadError(mark["message"])
    if done.returncode == 0 and STEP_DEVICES in steps and (not load or STEP_LOADED in steps):
        if load:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"bmodel": str(bmodel), "devices": list(devices), "lib_dir": library_dir}))
        return
    died = (f"crashed ({signal.Signals(-done.returncode).name})" if done.returncode < 0
            else f"exited with status {done.returncode}")
    said = _tail(done.stdout + "\n" + done.stderr)
    if STEP_DEVICES not in steps:
        raise TPUUnavailableError(f"cannot open TPU device(s) {list(devices)}: the Sophgo runtime from {library_dir} "
                                  f"{died} while opening them (in a child process; it said: {said})")
    raise ModelLoadError(f"{bmodel}: corrupt bmodel: the Sophgo runtime {died} while loading it (in a child "
                         f"process; it said: {said}); copy or compile it again")


def _probe_key(bmodel: Path, devices: Sequence[int], library_dir: str) -> str:
    """Names one file content (by path, size, mtime and inode), device set and runtime."""
    st = bmodel.stat()
    ident = f"{bmodel.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{list(devices)}|{library_dir}"
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(PROBE_MARK)]
    return " | ".join(kept[-lines:])[-400:] or "nothing"


CLOSED_UNDER_REQUEST = "TPU engine: the TPU device was closed under this request; the next request opens it again"


class TPUBackend(Backend):
    name = "tpu"

    def __init__(self, bmodel: str | os.PathLike, devices: Sequence[int] = (0,), lib_dir: str | None = None,
                 stop_ids: Iterable[int] = (), slots: int = 1):
        """``slots``: KV caches on the device, one prefix each (0: as many as its free memory
        holds beside the bmodel, up to 64; a number asked for is capped there too)."""
        self._fed_base = 0
        super().__init__()
        self.library_dir = load_libraries(lib_dir)
        bmrt = _module()
        try:
            bmrt.inspect_bmodel(str(bmodel))  # not a bmodel, truncated: said precisely, no device needed
        except bmrt.ModelError as exc:
            raise ModelLoadError(str(exc)) from None
        probe(Path(bmodel), list(devices), self.library_dir)
        self.path, self.devices = Path(bmodel), list(devices)
        self._closed = False  # by close(): the device is not reopened
        self._restarted = False  # truncate(0) since the device went away: the next feed may reopen it
        self._wanted_slots, self._slot = slots, 0
        self._engine = self._open()
        self.slots = self._engine.slots
        if slots != 1:
            log.info("TPU engine: %d KV-cache slot(s) of %.1f MiB each on the device (asked for %s)", self.slots,
                     self._engine.slot_bytes / 2**20, slots or "as many as fit")
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
        return self._engine.length  # 0 once the device has gone away

    def truncate(self, length: int) -> None:
        if self._engine.closed and not self._closed:  # the device went away, and the cache with it
            self._restarted = self._restarted or length == 0
            return
        self._call("truncate", length)

    def select_slot(self, index: int) -> None:
        """A switch of the device's cache pointers (``Engine::select_slot``): nothing is copied."""
        if not 0 <= index < self.slots:
            raise BackendError(f"slot {index} does not exist (this backend keeps {self.slots})")
        self._slot = index
        if self._engine.closed and not self._closed:  # the device went away: selected when it reopens
            return
        self._call("select_slot", index)

    def forward(self, token_ids: Sequence[int]) -> np.ndarray:
        return np.frombuffer(self._call("feed_logits", list(token_ids)), np.float32)

    def greedy_step(self, token_ids: Sequence[int]) -> int:
        return self._call("feed_greedy", list(token_ids))

    def verify(self, token_ids: Sequence[int]) -> list[int]:
        """One pass of the chunk blocks over the draft's rows, then the device's top-1 per row
        (only the ids come back): ``Engine.verify`` in csrc/engine.h."""
        return self._call("verify", list(token_ids))

    def greedy_loop(self, first_token: int, max_steps: int, on_token: Callable[[int], bool]) -> None:
        self.generate(first_token, max_steps, on_token)

    def close(self) -> None:
        self._closed = True
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
        return self._call("generate", first_token, max_steps, stops, on_token)

    def cancel(self) -> None:
        """Stop a running ``generate`` before its next step; safe from any thread."""
        self._engine.cancel()

    @property
    def stats(self):
        return self._engine.stats

    def _open(self):
        bmrt = _module()
        try:
            return bmrt.Engine(str(self.path), self.devices, self._wanted_slots)
        except bmrt.DeviceError as exc:
            raise TPUUnavailableError(f"{self.path}: {exc}") from None
        except bmrt.Error as exc:
            raise ModelLoadError(str(exc)) from None

    def _reopen(self) -> None:
        """The device went away under the backend (not by ``close``): open it and load the bmodel
        again. The counters go on from where they were."""
        fed = self._engine.stats.tokens_fed
        log.warning("the TPU engine over %s was closed under the backend; opening the device again", self.path)
        try:
            self._engine = self._open()
        except ModelLoadError as exc:
            raise BackendError(f"TPU engine: the device went away and cannot be opened again: {exc}") from None
        if self._engine.slots < self.slots:  # the engine above chose slots by this number
            raise BackendError(f"TPU engine: opened again, the device holds {self._engine.slots} KV-cache slot(s), "
                               f"not the {self.slots} it had")
        self._engine.select_slot(self._slot)
        self._fed_base -= fed
        self._restarted = False

    def _call(self, method: str, *args):
        if self._engine.closed and not self._closed:
            if not self._restarted:
                raise BackendError(CLOSED_UNDER_REQUEST)
            self._reopen()
        try:
            return getattr(self._engine, method)(*args)
        except _module().Error as exc:
            if self._engine.closed and not self._closed:  # the device went away during this call
                raise BackendError(CLOSED_UNDER_REQUEST) from None
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
                    devices: Sequence[int] | None = None, slots: int = 1) -> Engine:
    """An Engine over the compiled model at ``path`` (a .bmodel or its directory), with ``slots``
    KV caches on the device (``TPUBackend``)."""
    bmodel = find_bmodel(path)
    manifest = read_manifest(bmodel.parent)
    tokenizer_file = bmodel.parent / (manifest.get("tokenizer") or "tokenizer.json")
    if not tokenizer_file.exists():
        raise ModelLoadError(f"{tokenizer_file}: missing; the compiled model directory needs its tokenizer.json")
    tokenizer = Tokenizer.from_file(tokenizer_file)
    if devices is None:
        count = int(manifest.get("compiled", {}).get("num_device", 1) or 1)
        devices = list(range(count))
    backend = TPUBackend(bmodel, devices=devices, lib_dir=lib_dir, stop_ids=sorted(tokenizer.stop_ids), slots=slots)
    return Engine(backend, tokenizer, model_name=bmodel.stem)
