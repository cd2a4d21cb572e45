"""``wizardcoder.explainSelection``: the selected code explained in Markdown, streamed as
work-done progress.

Arguments ``[uri, range]``. The instruction goes into the model's own template (ChatML for
SmolLM2-Instruct, WizardCoder's "### Instruction / ### Response" otherwise); each ``report``
carries the whole explanation so far. ``$/cancelRequest`` reaches the engine through the same
cancel token as completions.
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

from ..inference.engine import CancelToken, Generation, GenerationParams, OnText, TextEngine
from ..inference.prompt import Prompt, build_instruction_prompt, language_name
from .documents import open_document, text_in_range, unusable_reason
from .errors import BadRequest
from .model_host import ModelHost
from .progress import Progress
from .settings import Settings
from .status import Stats
from .worker import InferenceWorker

COMMAND = "wizardcoder.explainSelection"
REPORT_EVERY_S = 0.1  # progress messages at most this often
INSTRUCTION_TOKENS = 2048  # the selection is cut beyond this
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
                            host: ModelHost, worker: InferenceWorker, stats: Stats,
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


async def _explain(instruction: str, settings: Settings, host: ModelHost, worker: InferenceWorker, stats: Stats,
                   progress: Progress, request_id: object) -> str:
    loop = asyncio.get_running_loop()
    last_report = 0.0

    def on_text(text: str) -> bool:  # worker thread
        nonlocal last_report
        now = time.monotonic()
        if now - last_report >= REPORT_EVERY_S:
            last_report = now
            loop.call_soon_threadsafe(progress.report, text)
        return True

    def job(token: CancelToken) -> str:  # worker thread
        prompt, generation = host.run(settings, lambda engine: run_model(engine, instruction,
                                                                         settings.explain_max_new_tokens, token, on_text))
        stats.record(request_id, "explain", generation, generation.stop_reason, prompt.mode)
        log.info("request %s: explain, prompt %d tokens, %d new tokens, stop %s, prefill %.0f ms, decode %.0f ms",
                 request_id, generation.prompt_tokens, len(generation.token_ids), generation.stop_reason,
                 generation.prefill_ms, generation.decode_ms)
        return generation.text.strip()

    cancel = CancelToken()
    progress.on_cancel(cancel.cancel)  # the editor's cancel button on the progress: stop, keep the text so far
    try:
        markdown = await worker.run(job, cancel, "explaining selection")
    finally:
        cancel.cancel()  # reaches the engine when this coroutine is cancelled ($/cancelRequest)
    if markdown is None:
        raise BadRequest("the explanation was cancelled before it started")
    return markdown


def run_model(engine: TextEngine, instruction: str, max_new_tokens: int, cancel: CancelToken,
              on_text: OnText | None = None) -> tuple[Prompt, Generation]:
    """In the worker thread: the instruction prompt, generated to its end (or ``cancel``)."""
    prompt = build_instruction_prompt(instruction, engine.tokenizer, INSTRUCTION_TOKENS)
    params = GenerationParams(max_new_tokens=max_new_tokens, stop_strings=prompt.stop_strings)
    return prompt, engine.generate(prompt.ids, params, cancel, on_text)
