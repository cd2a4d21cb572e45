"""The server's settings, defined once: the fields of ``Settings`` are the table.

Each field says its default, its range or choices and what it means, in one ``setting(...)``; its
key on the wire is the field's name in camelCase (``max_new_tokens`` → ``maxNewTokens``), as in
``docs/protocol.md``. Everything else reads that table: ``merge`` validates with it, and
``python scripts/gen_settings.py`` writes the editor clients' defaults and ranges (VS Code's
``package.json`` configuration and ``src/settings.ts``, the Neovim plugin's ``config.lua``) and the
table in ``docs/protocol.md`` from it; ``tests/test_settings_table.py`` fails when they drift.
**Adding a setting is one field here, then running that script.**

Sources, later wins: the defaults below, the command line (``wizardcoder-tpu serve --model …``),
``initializationOptions``, then each ``workspace/didChangeConfiguration`` (its
``settings.wizardcoder`` object, or the settings object itself when it has no such key). A key
with a wrong type or value is reported and ignored (the previous value stays); an unknown key is
reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any, get_type_hints

from ..inference.loader import WEIGHTS
from ..inference.prompt import MODES

SECTION = "wizardcoder"


def setting(default: Any, meaning: str, *, choices: tuple[str, ...] = (), minimum: int | None = None,
            maximum: int | None = None) -> Any:
    """A field of ``Settings``: its default and what the clients and the docs show of it.

    ``meaning`` is one sentence of Markdown. Integers need both bounds (a client enforces them);
    strings may name their ``choices``."""
    return field(default=default, metadata={"meaning": meaning, "choices": choices,
                                            "minimum": minimum, "maximum": maximum})


@dataclass(frozen=True)
class Settings:
    """The table. A new setting is a new field: a type from ``KINDS``, then ``setting(default,
    meaning, ...)``; run ``python scripts/gen_settings.py`` and the clients and docs know it."""

    model: str = setting("default", "`default` (qwen2.5-coder-0.5b), a named model (`qwen2.5-coder-0.5b`, "
                         "`qwen2.5-coder-1.5b`, `smollm2-135m`), a `.gguf` file, a checkpoint directory, or a "
                         "`.bmodel` (tpu backend).")
    backend: str = setting("cpu", "Where the model runs.", choices=("cpu", "tpu"))
    fallback_to_cpu: bool = setting(True, "When the model cannot be loaded (a missing file, no TPU device): serve "
                                    "the CPU default model instead.")
    weights: str = setting("auto", "How the CPU backend stores the weights: `auto` keeps the file's precision as "
                           "closely as a fast kernel allows, `int8`/`int4` requantize, `f32` is the reference.",
                           choices=WEIGHTS)
    threads: int = setting(0, "CPU backend threads; 0 is one per physical core.", minimum=0, maximum=256)
    max_new_tokens: int = setting(64, "Tokens per completion at most.", minimum=1, maximum=4096)
    speculate: int = setting(8, "Prompt-lookup speculation: tokens guessed by copying what followed the same words "
                             "earlier in the prompt, checked by the model in one call (the completion is the same, "
                             "only sooner); 0 turns it off.", minimum=0, maximum=64)
    debounce_ms: int = setting(150, "Milliseconds the server waits after the last change of a document before "
                               "running the model.", minimum=0, maximum=10_000)
    prompt_tokens: int = setting(1024, "Prompt budget in tokens (three quarters prefix, one quarter suffix).",
                                 minimum=64, maximum=32_768)
    context_tokens: int = setting(512, "Budget in tokens, besides the prompt's, for code from the other open files and "
                                  "recently edited places, put first (FIM with repository tokens, as Qwen2.5-Coder "
                                  "has); 0 turns it off.", minimum=0, maximum=32_768)
    mode: str = setting("auto", "Prompt format; `auto` uses fill-in-the-middle when the model's vocabulary has "
                        "FIM tokens, else `prefix`.", choices=MODES)
    languages: tuple[str, ...] = setting((), "Language ids to complete in (for example `python`); empty means "
                                         "all. The clients attach to these only.")
    explain_max_new_tokens: int = setting(256, "Tokens of an explanation at most.", minimum=1, maximum=4096)
    postprocess: bool = setting(True, "`false` shows the model's raw text, neither stopped early nor cut: for "
                                "measuring what post-processing adds (`bench/quality.py`), not for everyday use.")

    def allows(self, language_id: str) -> bool:
        return not self.languages or language_id in self.languages

    @property
    def model_key(self) -> tuple[str, str, bool, str, int]:
        """What a reload depends on."""
        return self.model, self.backend, self.fallback_to_cpu, self.weights, self.threads


# The JSON type of each Python type a setting may have, as the clients and the docs name it.
KINDS: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", tuple[str, ...]: "string[]"}


@dataclass(frozen=True)
class Setting:
    """One row of the table, as a client or the docs see it (built from a field of ``Settings``)."""

    key: str  # camelCase, as the clients send it
    name: str  # the attribute of Settings
    kind: str  # "string" | "boolean" | "integer" | "string[]"
    default: Any
    meaning: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any) -> Any:
        """``value`` as ``Settings`` holds it, or ValueError saying what was expected."""
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if self.kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int) or not self.minimum <= value <= self.maximum:
                raise ValueError(f"expected an integer from {self.minimum} to {self.maximum}")
            return value
        if self.kind == "string[]":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)
        if not isinstance(value, str) or not value:
            raise ValueError("expected a non-empty string")
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        return value


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _row(spec: Any, python_type: Any) -> Setting:
    if python_type not in KINDS:
        raise TypeError(f"setting {spec.name!r}: a {python_type} has no JSON type; use one of {list(KINDS)}")
    row = Setting(key=camel_case(spec.name), name=spec.name, kind=KINDS[python_type], default=spec.default,
                  **spec.metadata)
    if (row.kind == "integer") != (row.minimum is not None and row.maximum is not None):
        raise TypeError(f"setting {row.key!r}: integers, and only integers, need a minimum and a maximum")
    if row.choices and row.kind != "string":
        raise TypeError(f"setting {row.key!r}: only strings have choices")
    try:
        row.check(row.default)
    except ValueError as exc:
        raise TypeError(f"setting {row.key!r}: the default {row.default!r} is not a valid value ({exc})") from None
    return row


@cache
def table(settings_class: type = Settings) -> dict[str, Setting]:
    """The rows of ``settings_class`` (``Settings``, or a dataclass declared the same way), by
    camelCase key, in declaration order. Do not change the dict: it is cached."""
    hints = get_type_hints(settings_class)
    rows = [_row(spec, hints[spec.name]) for spec in fields(settings_class)]
    return {row.key: row for row in rows}


SETTINGS: dict[str, Setting] = table()


def merge(settings: Settings, raw: Any) -> tuple[Settings, list[str]]:
    """``settings`` updated by the user's ``raw`` object; and a problem per ignored key."""
    if raw is None:
        return settings, []
    if not isinstance(raw, Mapping):
        return settings, [f"settings must be an object, not {type(raw).__name__}; ignored"]
    if isinstance(raw.get(SECTION), Mapping):
        raw = raw[SECTION]
    rows = table(type(settings))
    changes: dict[str, Any] = {}
    problems = []
    for key, value in raw.items():
        row = rows.get(key)
        if row is None:
            problems.append(f"unknown setting {key!r} ignored (known: {', '.join(rows)})")
            continue
        try:
            changes[row.name] = row.check(value)
        except ValueError as exc:
            problems.append(f"setting {key!r}: {exc}, got {value!r}; keeping {getattr(settings, row.name)!r}")
    return replace(settings, **changes), problems


def from_command_line(args: Any) -> Settings:
    """The defaults overridden by the ``serve`` arguments that were given."""
    given = {"model": getattr(args, "model", None), "backend": getattr(args, "backend", None),
             "fallback_to_cpu": True if getattr(args, "fallback_cpu", False) else None,
             "weights": getattr(args, "weights", None), "threads": getattr(args, "threads", None)}
    settings = replace(Settings(), **{name: value for name, value in given.items() if value})
    speculate = getattr(args, "speculate", None)  # 0 is a value here: speculation off
    return settings if speculate is None else replace(settings, speculate=speculate)
