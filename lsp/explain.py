"""``wizardcoder.explainSelection``: the selected code explained in Markdown, streamed as
work-done progress.

Arguments ``[uri, range]``. The instruction goes into the model's own template (ChatML for
SmolLM2-Instruct, WizardCoder's "### Instruction / ### Response" otherwise); each ``report``
carries the whole explanation so far. ``$/cancelRequest`` reaches the engine through the same
cancel token as completions.

An explanation is generated in slices of ``SLICE_TOKENS`` tokens, each one worker job that ends by
asking for its next turn (``worker.Continue``): a keystroke's completion, which the fair queue
serves before explanations, waits at most one slice. Each slice continues the prompt and the tokens
so far, whose keys and values the engine's KV-cache slot still holds, so slicing feeds each token
once; greedy decoding makes the result the one an unsliced run gives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.workspace import Workspace

from ..inference.engine import CancelToken, Generation, GenerationParams, OnText, TextEngine, _stop_string_cut
from ..inference.prompt import Prompt, build_instruction_prompt, language_name
from .documents import open_document, text_in_range, unusable_reason
from .errors import BadRequest
from .loop_post import post
from .model_host import ModelHost
from .progress import Progress
from .settings import Settings
from .status import Stats
from .team import ClientJobs
from .worker import Continue

COMMAND = "wizardcoder.explainSelection"
REPORT_EVERY_S = 0.1  # progress messages at most this often
INSTRUCTION_TOKENS = 2048  # the selection is cut beyond this
SLICE_TOKENS = 16  # tokens per worker turn: what a keystroke may wait behind an explanation
log = logging.getLogger(__name__)
_converter = get_converter()


def parse_arguments(arguments: list[Any] | None) -> tuple[str, types.Range]:
    """The command's ``[uri, range]``; BadRequest when they are not that."""
    if not arguments or len(arguments) != 2 or not isinstance(arguments[0], str):
        raise BadRequest(f"{COMMAND} takes [uri, range], got {arguments!r}")
    try:
        selection = _converter.structure(arguments[1], types.Range)
    except Exception as exc:
        raise BadRequest(f"{COMMAND}: the second argument is not an LSP Range ({exc})") from exc
    return arguments[0], selection


def instruction_for(workspace: Workspace, uri: str, selection: types.Range) -> str:
    """The instruction that asks to explain the selected code."""
    document = open_document(workspace, uri)
    if (reason := unusable_reason(document.source)) is not None:
        raise BadRequest(f"{uri}: {reason}")
    code = text_in_range(document, selection, workspace.position_codec)
    if not code.strip():
        raise BadRequest("the selection is empty: select the code to explain")
    language = language_name(document.language_id or "")
    return (f"Explain what the following {language + ' ' if language else ''}code does. "
            f"Answer in Markdown.\n\n```{document.language_id or ''}\n{code.rstrip()}\n```")


async def explain_selection(workspace: Workspace, arguments: list[Any] | None, *, settings: Settings,
                            host: ModelHost, worker: ClientJobs, stats: Stats,
                            begin_progress: Callable[[], Awaitable[Progress]], request_id: object) -> dict[str, str]:
    """The explanation of the selection that ``arguments`` name, as ``{"markdown": …}``. Bad
    arguments fail before any progress begins; then the text so far goes to the progress that
    ``begin_progress`` starts, as it grows, and the progress ends with the command."""
    uri, selection = parse_arguments(arguments)
    instruction = instruction_for(workspace, uri, selection)
    progress = await begin_progress()
    try:
        markdown = await _explain(instruction, settings, host, worker, stats, progress, request_id)
        progress.report(markdown)  # the whole text, unthrottled
    finally:
        progress.end()
    return {"markdown": markdown}


async def _explain(instruction: str, settings: Settings, host: ModelHost, worker: ClientJobs, stats: Stats,
                   progress: Progress, request_id: object) -> str:
    loop = asyncio.get_running_loop()
    last_report = 0.0

    def on_text(text: str) -> bool:  # worker thread
        nonlocal last_report
        now = time.monotonic()
        if now - last_report >= REPORT_EVERY_S:
            last_report = now
            post(loop, progress.report, text)
        return True

    def finished(prompt: Prompt, generation: Generation) -> str:  # worker thread
        stats.record(request_id, "explain", generation, generation.stop_reason, prompt.mode)
        log.info("request %s: explain, prompt %d tokens, %d new tokens, stop %s, prefill %.0f ms, decode %.0f ms",
                 request_id, generation.prompt_tokens, len(generation.token_ids), generation.stop_reason,
                 generation.prefill_ms, generation.decode_ms)
        return generation.text.strip()

    job = SlicedExplanation(host, settings, instruction, settings.explain_max_new_tokens, on_text, finished)
    cancel = CancelToken()
    progress.on_cancel(cancel.cancel)  # the editor's cancel button on the progress: stop, keep the text so far
    try:
        markdown = await worker.run(job.step, cancel, "explaining selection", kind="explain", request_id=request_id)
    finally:
        cancel.cancel()  # reaches the engine when this coroutine is cancelled ($/cancelRequest)
    if markdown is None:  # cancelled between two slices (the cancel button), or before the first
        markdown = job.so_far()
    if markdown is None:
        raise BadRequest("the explanation was cancelled before it started")
    return markdown


class SlicedExplanation:
    """An explanation as a worker job of slices: ``step`` generates up to ``SLICE_TOKENS`` more
    tokens and returns ``Continue(step)`` until the generation ends, then ``finish``'s result."""

    def __init__(self, host: ModelHost, settings: Settings, instruction: str, max_new_tokens: int, on_text: OnText,
                 finish: Callable[[Prompt, Generation], str], slice_tokens: int = SLICE_TOKENS):
        self._host = host
        self._settings = settings
        self._instruction = instruction
        self._max_new_tokens = max_new_tokens
        self._on_text = on_text
        self._finish = finish
        self._slice_tokens = slice_tokens
        self._prompt: Prompt | None = None
        self._tokens: list[int] = []
        self._first: Generation | None = None  # the first slice: the prompt's prefill
        self._decode_ms = 0.0
        self._engine: TextEngine | None = None  # the one the prompt was built for

    def so_far(self) -> str | None:
        """``finish`` of the slices done, stopped as cancelled; None when none ran."""
        if self._prompt is None or self._first is None:
            return None
        assert self._engine is not None
        text = self._engine.tokenizer.decode(self._tokens)
        whole = Generation(self._tokens, text, "cancelled", len(self._prompt.ids), self._first.reused_tokens,
                           self._first.prefill_ms, self._decode_ms)
        return self._finish(self._prompt, whole)

    def step(self, cancel: CancelToken) -> str | Continue:  # worker thread
        """One slice, through ``ModelHost.run`` (a failing remote server falls back like a completion)."""
        return self._host.run(self._settings, lambda engine: self._slice(engine, cancel))

    def _slice(self, engine: TextEngine, cancel: CancelToken) -> str | Continue:
        if engine is not self._engine:  # the first slice, or a fallback engine with its own tokenizer: start over
            self._engine, self._prompt, self._tokens, self._first, self._decode_ms = engine, None, [], None, 0.0
        if self._prompt is None:
            self._prompt = build_instruction_prompt(self._instruction, engine.tokenizer, INSTRUCTION_TOKENS)
        prompt, before = self._prompt, engine.tokenizer.decode(self._tokens) if self._tokens else ""
        wanted = min(self._slice_tokens, self._max_new_tokens - len(self._tokens))
        params = GenerationParams(max_new_tokens=wanted, stop_strings=prompt.stop_strings)
        part = engine.generate(prompt.ids + self._tokens, params, cancel, lambda text: self._on_text(before + text))
        self._tokens += part.token_ids
        if self._first is None:
            self._first = part
        else:
            self._decode_ms += part.prefill_ms
        self._decode_ms += part.decode_ms
        text = engine.tokenizer.decode(self._tokens)
        cut = _stop_string_cut(text, prompt.stop_strings)  # a stop string across two slices
        reason = "stop_string" if cut is not None else part.stop_reason
        if reason == "max_tokens" and len(self._tokens) < self._max_new_tokens:
            return Continue(self.step)
        whole = Generation(self._tokens, text if cut is None else text[:cut], reason, len(prompt.ids),
                           self._first.reused_tokens, self._first.prefill_ms, self._decode_ms)
        return self._finish(prompt, whole)
