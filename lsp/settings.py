"""The server's settings: one table of defaults, merged with what the user gives.

Sources, later wins: the defaults below, the command line (``wizardcoder-tpu serve --model …``),
``initializationOptions``, then each ``workspace/didChangeConfiguration`` (its
``settings.wizardcoder`` object, or the settings object itself when it has no such key). Keys are
camelCase, as in ``docs/protocol.md``. A key with a wrong type or value is reported and ignored
(the previous value stays); an unknown key is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ..inference.loader import WEIGHTS
from ..inference.prompt import MODES

SECTION = "wizardcoder"


@dataclass(frozen=True)
class Settings:
    model: str = "default"  # default | a .gguf | a checkpoint directory | a .bmodel (tpu)
    backend: str = "cpu"  # cpu | tpu
    fallback_to_cpu: bool = True  # a model that cannot be loaded: serve from the CPU default instead
    weights: str = "auto"  # cpu: auto (the file's precision) | int8 | int4 | f32 (the reference)
    threads: int = 0  # cpu: onnxruntime threads; 0 = one per physical core
    max_new_tokens: int = 64  # tokens per completion at most
    debounce_ms: int = 150  # wait after the last change of a document before running the model
    prompt_tokens: int = 1024  # prompt budget (¾ prefix, ¼ suffix)
    mode: str = "auto"  # auto | fim | instruct | prefix
    languages: tuple[str, ...] = ()  # language ids to complete in; empty means all
    explain_max_new_tokens: int = 256  # tokens of an explanation at most

    def allows(self, language_id: str) -> bool:
        return not self.languages or language_id in self.languages

    @property
    def model_key(self) -> tuple[str, str, bool, str, int]:
        """What a reload depends on."""
        return self.model, self.backend, self.fallback_to_cpu, self.weights, self.threads


def _string(choices: tuple[str, ...] | None = None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a non-empty string")
        if choices and value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value
    return check


def _int(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _languages(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of language ids")
    return tuple(value)


# camelCase key -> (field, check)
KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "model": ("model", _string()),
    "backend": ("backend", _string(("cpu", "tpu"))),
    "fallbackToCpu": ("fallback_to_cpu", _bool),
    "weights": ("weights", _string(WEIGHTS)),
    "threads": ("threads", _int(0, 256)),
    "maxNewTokens": ("max_new_tokens", _int(1, 4096)),
    "debounceMs": ("debounce_ms", _int(0, 10_000)),
    "promptTokens": ("prompt_tokens", _int(64, 32_768)),
    "mode": ("mode", _string(MODES)),
    "languages": ("languages", _languages),
    "explainMaxNewTokens": ("explain_max_new_tokens", _int(1, 4096)),
}
assert {f for f, _ in KEYS.values()} == {f.name for f in fields(Settings)}


def merge(settings: Settings, raw: Any) -> tuple[Settings, list[str]]:
    """``settings`` updated by the user's ``raw`` object; and a problem per ignored key."""
    if raw is None:
        return settings, []
    if not isinstance(raw, Mapping):
        return settings, [f"settings must be an object, not {type(raw).__name__}; ignored"]
    if isinstance(raw.get(SECTION), Mapping):
        raw = raw[SECTION]
    changes: dict[str, Any] = {}
    problems = []
    for key, value in raw.items():
        if key not in KEYS:
            problems.append(f"unknown setting {key!r} ignored (known: {', '.join(KEYS)})")
            continue
        name, check = KEYS[key]
        try:
            changes[name] = check(value)
        except ValueError as exc:
            problems.append(f"setting {key!r}: {exc}, got {value!r}; keeping {getattr(settings, name)!r}")
    return replace(settings, **changes), problems


def from_command_line(args: Any) -> Settings:
    """The defaults overridden by ``serve``'s arguments."""
    settings = Settings(model=getattr(args, "model", None) or "default", backend=getattr(args, "backend", None) or "cpu")
    if getattr(args, "fallback_cpu", False):
        settings = replace(settings, fallback_to_cpu=True)
    if getattr(args, "weights", None):
        settings = replace(settings, weights=args.weights)
    if getattr(args, "threads", None):
        settings = replace(settings, threads=args.threads)
    return settings
