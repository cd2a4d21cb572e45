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
import uuid
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from ..inference.engine import CancelToken, GenerationParams
from ..inference.prompt import build_instruction_prompt, language_name
from .documents import open_document, text_in_range, unusable_reason
from .errors import BadRequest

if TYPE_CHECKING:
    from .server import WizardServer

COMMAND = "wizardcoder.explainSelection"
REPORT_EVERY_S = 0.1  # progress messages at most this often
INSTRUCTION_TOKENS = 2048  # the selection is cut beyond this
log = logging.getLogger(__name__)


async def explain_selection(ls: WizardServer, params: types.ExecuteCommandParams) -> dict[str, str]:
    uri, selection = _arguments(ls, params.arguments)
    document = open_document(ls.workspace, uri)
    if (reason := unusable_reason(document.source)) is not None:
        raise BadRequest(f"{uri}: {reason}")
    code = text_in_range(document, selection, ls.workspace.position_codec)
    if not code.strip():
        raise BadRequest("the selection is empty: select the code to explain")
    language = language_name(document.language_id or "")
    instruction = (f"Explain what the following {language + ' ' if language else ''}code does. "
                   f"Answer in Markdown.\n\n```{document.language_id or ''}\n{code.rstrip()}\n```")
    request_id = ls.protocol.msg_id
    token = params.work_done_token or await _create_progress(ls)
    _progress(ls, token, types.WorkDoneProgressBegin(title="Explaining selection", cancellable=True))
    cancel = CancelToken()
    settings = ls.settings
    last_report = [0.0]
    loop = asyncio.get_running_loop()

    def on_text(text: str) -> None:  # worker thread
        now = time.monotonic()
        if now - last_report[0] >= REPORT_EVERY_S:
            last_report[0] = now
            loop.call_soon_threadsafe(_progress, ls, token, types.WorkDoneProgressReport(message=text))

    def run(token_: CancelToken) -> str:
        engine = ls.host.engine
        prompt = build_instruction_prompt(instruction, engine.tokenizer, INSTRUCTION_TOKENS)
        generation = engine.generate(prompt.ids, GenerationParams(max_new_tokens=settings.explain_max_new_tokens,
                                                                  stop_strings=prompt.stop_strings), token_, on_text)
        ls.stats.record(request_id, "explain", generation, generation.stop_reason, prompt.mode)
        log.info("request %s: explain, prompt %d tokens, %d new tokens, stop %s, prefill %.0f ms, decode %.0f ms",
                 request_id, generation.prompt_tokens, len(generation.token_ids), generation.stop_reason,
                 generation.prefill_ms, generation.decode_ms)
        return generation.text.strip()

    try:
        markdown = await ls.run_job(run, cancel, "explaining selection")
        if markdown is None:
            raise BadRequest("the explanation was cancelled before it started")
        _progress(ls, token, types.WorkDoneProgressReport(message=markdown))  # the whole text, unthrottled
    finally:
        cancel.cancel()  # reaches the engine when this coroutine is cancelled ($/cancelRequest)
        _progress(ls, token, types.WorkDoneProgressEnd())
    return {"markdown": markdown}


def _arguments(ls: WizardServer, arguments: list[Any] | None) -> tuple[str, types.Range]:
    if not arguments or len(arguments) != 2 or not isinstance(arguments[0], str):
        raise BadRequest(f"{COMMAND} takes [uri, range], got {arguments!r}")
    try:
        selection = ls.protocol._converter.structure(arguments[1], types.Range)
    except Exception as exc:
        raise BadRequest(f"{COMMAND}: the second argument is not an LSP Range ({exc})") from exc
    return arguments[0], selection


async def _create_progress(ls: WizardServer) -> types.ProgressToken | None:
    """A server-created progress token, when the client accepts them."""
    window = ls.client_capabilities.window
    if window is None or not window.work_done_progress:
        return None
    token = f"wizardcoder-explain-{uuid.uuid4()}"
    try:
        await ls.work_done_progress.create_async(token)
    except Exception as exc:  # the client refused: explain without progress
        log.warning("window/workDoneProgress/create failed: %s", exc)
        return None
    return token


def _progress(ls: WizardServer, token: types.ProgressToken | None, value: Any) -> None:
    if token is None:
        return
    if isinstance(value, types.WorkDoneProgressBegin):
        ls.work_done_progress.begin(token, value)
    elif isinstance(value, types.WorkDoneProgressReport):
        ls.work_done_progress.report(token, value)
    else:
        ls.work_done_progress.end(token, value)
