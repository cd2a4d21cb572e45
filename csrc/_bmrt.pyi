"""The C++ bmrt engine (csrc/): a .bmodel of the pieces in docs/tpu-pieces.md, KV cache on the device.

Private: ``inference/backends/tpu.py`` is its one user. The Sophgo libraries are loaded at run time
(``load_libraries``), so importing this module needs no libsophon.
"""

from collections.abc import Callable, Sequence

class Error(RuntimeError):
    """Base of the engine's errors."""

class LibraryError(Error):
    """libbmlib/libbmrt not found in any directory tried (the message lists them)."""

class ModelError(Error):
    """The .bmodel is unreadable, corrupt, or does not follow the piece contract."""

class DeviceError(Error):
    """The device cannot be opened, is out of memory, or a launch/copy failed."""

def load_libraries(dirs: Sequence[str]) -> str:
    """Load libbmlib + libbmrt from the first directory that has both; return it. The first
    success is kept for the life of the process."""

def loaded_from() -> str:
    """The directory the libraries came from, or ''."""

def check_devices(devices: Sequence[int]) -> None:
    """Open and free each device; raises DeviceError. The cmodel's bmlib exits the process when it
    cannot start its simulator: run this in a child process first (backends/tpu_probe.py)."""

def inspect_bmodel(path: str) -> dict[str, str | int]:
    """Header facts (chip, version, device_num, net_count) without the libraries; raises
    ModelError for a file that is not a bmodel, truncated, or damaged where bmrt would crash."""

def check_bmodel(path: str) -> dict[str, int]:
    """The piece contract (docs/tpu-pieces.md) checked on the file alone, without the libraries or
    a device: the same check the engine runs on what the runtime reports. Returns seq_len,
    chunk_len, chunk_rows, num_layers, hidden_size, vocab_size (as the Engine's properties) and
    kv_row_bytes (one position of one layer's K). Raises ModelError naming the net and what is wrong, for a
    damaged file as inspect_bmodel does, and for a bmodel compiled for several devices (checked
    when the engine loads it)."""

CALL_ROWS: int
"""What plan_feed charges a call, in rows: the weight read every call makes, about 64 rows of
compute on a BM1684X with int4 weights."""

def plan_feed(length: int, count: int, seq_len: int, chunk_rows: Sequence[int]) -> list[tuple[str, int]]:
    """The calls the engine makes to feed ``count`` tokens after ``length`` cached ones, in order:
    (``prefill`` | ``chunk`` | ``decode``, rows computed). Fewest rows plus CALL_ROWS per call;
    without chunk sets, the N-row prefill from empty, else a decode step per token."""

class EngineStats:
    @property
    def tokens_fed(self) -> int: ...
    @property
    def block_rows(self) -> int:
        """Positions the block nets computed, padding included."""
    @property
    def prefills(self) -> int: ...
    @property
    def chunks(self) -> int: ...
    @property
    def decodes(self) -> int: ...
    @property
    def verifies(self) -> int: ...
    @property
    def launches(self) -> int: ...
    @property
    def bytes_to_device(self) -> int:
        """Bytes copied host -> device (inputs, masks) since the engine opened."""
    @property
    def bytes_from_device(self) -> int:
        """Bytes copied device -> host (token ids, logits)."""
    @property
    def bytes_on_device(self) -> int:
        """Bytes copied device -> device (KV rows into the cache, the head's input row)."""

class Engine:
    def __init__(self, bmodel: str, devices: Sequence[int] = [], slots: int = 1) -> None:
        """Open ``devices`` (empty: 0 .. the bmodel's device count - 1), load ``bmodel``, check
        its nets, allocate the device buffers with KV caches for ``slots`` prefixes (0: as many as
        the free device memory holds, up to 64; fewer than asked where they do not fit)."""
    def close(self) -> None:
        """Free the device. From another thread during ``generate``: that call raises DeviceError
        before its next step."""
    @property
    def closed(self) -> bool: ...
    @property
    def seq_len(self) -> int:
        """N: the static context."""
    @property
    def chunk_len(self) -> int:
        """K, or 0 when the bmodel has no block_chunk nets."""
    @property
    def chunk_rows(self) -> list[int]:
        """The rows of every chunk set (block_chunk_{i} and block_chunk{R}_{i}), ascending."""
    @property
    def num_layers(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def vocab_size(self) -> int:
        """0 when the bmodel has no lm_head_logits net."""
    @property
    def device_count(self) -> int: ...
    @property
    def net_names(self) -> list[str]: ...
    @property
    def length(self) -> int:
        """Positions held in the selected slot's device KV cache."""
    @property
    def slots(self) -> int:
        """KV-cache slots on the device, one prefix each."""
    @property
    def selected_slot(self) -> int: ...
    @property
    def slot_bytes(self) -> int:
        """Device memory one slot takes (K and V of every layer, the full context)."""
    def select_slot(self, slot: int) -> None:
        """Make ``slot`` the cache every call uses (a switch on the device: nothing is copied)."""
    @property
    def stats(self) -> EngineStats: ...
    def truncate(self, length: int) -> None: ...
    def feed_greedy(self, ids: Sequence[int]) -> int:
        """Append ``ids`` to the cache; the greedy next token (top-1 on the device)."""
    def verify(self, ids: Sequence[int]) -> list[int]:
        """Append all of ``ids``; the greedy token after each (``[i]`` follows ``ids[:i + 1]``), in one
        pass of the smallest chunk set that holds them, then the top-1 head once per row."""
    def feed_logits(self, ids: Sequence[int]) -> bytes:
        """Append ``ids``; the last position's logits as float32 bytes."""
    def generate(self, first: int, max_steps: int, stop_ids: Sequence[int] = [],
                 on_token: Callable[[int], bool] | None = None) -> tuple[list[int], str]:
        """Feed ``first`` then each greedy token, up to ``max_steps`` steps, without the GIL.
        Returns the tokens and why it stopped: max_steps | stop_token | callback | cancelled | context."""
    def cancel(self) -> None:
        """Stop a running ``generate`` before its next step (any thread)."""
