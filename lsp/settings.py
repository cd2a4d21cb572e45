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

from ..inference.loader import BACKENDS
from ..inference.model.graph_options import WEIGHTS
from ..inference.prompt import MODES
from ..inference.remote import PROTOCOLS

SECTION = "wizardcoder"
TRIGGERS = ("automatic", "manual")
# Secrets and key files: never sent to the model, by default (users may extend or empty the list).
DISABLED_FILES = (".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.crt", "*.p12", "*.pfx", "*.jks",
                  "*.keystore", "*.kdbx", "*.gpg", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
                  "*.ppk", ".netrc", ".pgpass", ".npmrc", ".pypirc", ".git-credentials", "credentials",
                  "credentials.json", "*.tfvars", "*.tfstate")
CLIENT_KEYS = ("token",)  # sent beside the settings (a team server's token, team.py), never one of them
# Keys that were settings once, and what to set instead (reported rather than "unknown setting").
RETIRED = {"languages": "list the languages not to complete in `disabledLanguages` instead (every other one is "
                        "completed)"}


def setting(default: Any, meaning: str, *, choices: tuple[str, ...] = (), minimum: int | None = None,
            maximum: int | None = None, workspace: bool = True) -> Any:
    """A field of ``Settings``: its default and what the clients and the docs show of it.

    ``meaning`` is one sentence of Markdown. Integers need both bounds (a client enforces them);
    strings may name their ``choices``. ``workspace=False``: a folder's own settings (a cloned
    repository's ``.vscode/settings.json``) may not set it, only the user's (VS Code's ``machine``
    scope): where the code is sent is the user's choice, never a repository's."""
    return field(default=default, metadata={"meaning": meaning, "choices": choices,
                                            "minimum": minimum, "maximum": maximum, "workspace": workspace})


@dataclass(frozen=True)
class Settings:
    """The table. A new setting is a new field: a type from ``KINDS``, then ``setting(default,
    meaning, ...)``; run ``python scripts/gen_settings.py`` and the clients and docs know it."""

    model: str = setting("default", "`default` (qwen2.5-coder-0.5b), a named model (`qwen2.5-coder-0.5b`, "
                         "`qwen2.5-coder-1.5b`, `smollm2-135m`), a `.gguf` file, a checkpoint directory, or a "
                         "`.bmodel` (tpu backend); with the remote backend, the served model's tokenizer source (its "
                         "name, GGUF, checkpoint directory or `tokenizer.json`).")
    backend: str = setting("cpu", "Where the model runs: in this process (`cpu`, `tpu`) or on an inference server "
                           "(`remote`: see `endpoint`).", choices=BACKENDS)
    fallback_to_cpu: bool = setting(True, "When the model cannot be loaded (a missing file, no TPU device, an "
                                    "inference server that does not answer), or the inference server fails a request: "
                                    "serve the CPU default model instead.")
    endpoint: str = setting("http://127.0.0.1:8080", "With `backend: remote`: the inference server's base URL "
                            "(`https://…`; `http://` only on loopback unless the server runs with `--allow-http`); "
                            "the user's settings only, never a workspace's.", workspace=False)
    remote_protocol: str = setting("openai", "With `backend: remote`: `openai` (`/v1/completions`: vLLM, TGI, "
                                   "llama-cpp-python, llama.cpp), `llama.cpp` (`/completion` with our token ids) or "
                                   "`llama.cpp-infill` (`/infill`: llama.cpp builds the FIM prompt from the prefix, "
                                   "suffix and context chunks).",
                                   choices=PROTOCOLS)
    remote_model: str = setting("auto", "With `remoteProtocol: openai`: the served model's name; `auto` takes the "
                                "first that `/v1/models` lists.")
    remote_timeout_ms: int = setting(15_000, "With `backend: remote`: how long the server may take to connect, to "
                                     "start the completion, or between two of its pieces, before the request fails.",
                                     minimum=100, maximum=600_000)
    weights: str = setting("auto", "How the CPU backend stores the weights: `auto` keeps the file's precision as "
                           "closely as a fast kernel allows, `int8`/`int4` requantize, `f32` is the reference.",
                           choices=WEIGHTS)
    threads: int = setting(0, "CPU backend threads; 0 is one per physical core.", minimum=0, maximum=256)
    cache_slots: int = setting(0, "KV caches kept, one earlier prompt each: switching between documents (or a team "
                               "server's clients) and back prefills only what changed. 0 is the backend's own: 4 on "
                               "the CPU, on the TPU as many as the device memory beside the bmodel holds (at most "
                               "64; a number asked for is capped there too).", minimum=0, maximum=64)
    max_new_tokens: int = setting(64, "Tokens per completion at most.", minimum=1, maximum=4096)
    speculate: int = setting(0, "Prompt-lookup speculation: up to this many tokens guessed by copying what followed "
                             "the same words earlier in the prompt, checked by the model in one call (the completion "
                             "is the same, only sooner where code repeats; 8 is the usual value). 0, the default, "
                             "turns it off: on the CPU a multi-row call costs more than the drafts it accepts on "
                             "code that does not repeat (bench/results/engine-speculation.md).", minimum=0, maximum=64)
    debounce_ms: int = setting(150, "Milliseconds the server waits after the last change of a document before "
                               "running the model.", minimum=0, maximum=10_000)
    prompt_tokens: int = setting(1024, "Prompt budget in tokens (three quarters prefix, one quarter suffix).",
                                 minimum=64, maximum=32_768)
    context_tokens: int = setting(0, "Budget in tokens, besides the prompt's, for code from the other open files and "
                                  "recently edited places, put first (FIM with repository tokens, as Qwen2.5-Coder "
                                  "has; about 512 is the usual value). 0, the default, turns it off: with it, "
                                  "Qwen2.5-Coder-0.5B completed fewer line holes exactly (3 of 12 against 6 of 12, "
                                  "bench/results/quality.md) and twice as slowly.", minimum=0, maximum=32_768)
    mode: str = setting("auto", "Prompt format; `auto` uses fill-in-the-middle when the model's vocabulary has "
                        "FIM tokens, else `prefix`.", choices=MODES)
    explain_max_new_tokens: int = setting(256, "Tokens of an explanation at most.", minimum=1, maximum=4096)
    trigger: str = setting("automatic", "`automatic`: a suggestion as you type; `manual`: the model runs only when "
                           "you ask (the client's suggest key or command); typing on into a suggestion still "
                           "serves its rest from the cache.", choices=TRIGGERS)
    max_line_suffix: int = setting(8, "No automatic suggestion when more than this many characters follow the cursor "
                                   "on its line (llama.vim's rule); asking for one still works.", minimum=0,
                                   maximum=10_000)
    disabled_languages: tuple[str, ...] = setting((), "Language ids never completed (for example `markdown`), "
                                                  "asked for or not, and never used as context for other files; "
                                                  "every other language is completed.")
    disabled_files: tuple[str, ...] = setting(DISABLED_FILES, "File patterns never completed and never used as "
                                              "context for other files (`fnmatch` on the file's name, or on its "
                                              "path when the pattern has a `/`): secrets and key files by default.")
    max_time_ms: int = setting(0, "Once the model has run this long for one suggestion, it stops at the next "
                               "line break and shows what it has (llama.cpp's `t_max_predict_ms`); 0 is no "
                               "limit.", minimum=0, maximum=60_000)
    prefetch: bool = setting(True, "While idle after a suggestion was shown, compute the one that follows it as if "
                             "it were accepted whole, so that accepting and going on is served from the cache (after "
                             "a word or a line of it, its own rest is).")
    statistics: bool = setting(True, "Count shown and accepted suggestions and their latency in a file under the "
                               "cache, for `wizardcoder-tpu stats` (nothing leaves the machine).")
    postprocess: bool = setting(True, "`false` shows the model's raw text, neither stopped early nor cut: for "
                                "measuring what post-processing adds (`bench/quality.py`), not for everyday use.")
    token_healing: bool = setting(True, "Take the word the cursor ends off the prompt and let the model's first "
                                  "tokens spell it again, the best of those that fit: better suggestions inside a word "
                                  "(`bench/results/quality.md`). Local engines only; `false` for measuring it.")

    @property
    def model_key(self) -> tuple[Any, ...]:
        """What a reload depends on."""
        return (self.model, self.backend, self.fallback_to_cpu, self.weights, self.threads, self.cache_slots,
                self.endpoint, self.remote_protocol, self.remote_model, self.remote_timeout_ms)


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
    workspace: bool = True  # False: only the user's settings may set it (VS Code's machine scope)

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
        if key in CLIENT_KEYS:
            continue
        if key in RETIRED:
            problems.append(f"setting {key!r} is no more: {RETIRED[key]}; ignored")
            continue
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
             "weights": getattr(args, "weights", None), "threads": getattr(args, "threads", None),
             "endpoint": getattr(args, "endpoint", None), "remote_protocol": getattr(args, "remote_protocol", None),
             "remote_model": getattr(args, "remote_model", None), "cache_slots": getattr(args, "cache_slots", None)}
    settings = replace(Settings(), **{name: value for name, value in given.items() if value})
    speculate = getattr(args, "speculate", None)  # 0 is a value here: speculation off
    return settings if speculate is None else replace(settings, speculate=speculate)
