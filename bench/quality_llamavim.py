"""The reference row: a GGUF on llama.cpp with llama.vim's rules, as a user of llama.vim gets it.

Read from ggml-org/llama.vim ``autoload/llama.vim`` (``s:fim_ctx_local``, ``llama#fim``,
``s:fim_render``) and llama.cpp's ``/infill`` (``format_prompt_infill`` and the ``n_indent``
stop in the server's token loop); reimplemented here over ``llama-cpp-python``:

- local context: the 256 lines before the cursor's line (``n_prefix``) and 64 after it
  (``n_suffix``); the cursor's line split at the cursor into the request's ``prompt`` (the
  middle) and the head of its suffix; on a whitespace-only line the request starts at the line's
  beginning with ``n_indent`` 0, otherwise ``n_indent`` is the line's indentation;
- no request when more than ``max_line_suffix`` (8) characters follow the cursor (auto-trigger);
- the prompt as ``/infill`` builds it without extra chunks: ``<|repo_name|>myproject\\n
  <|file_sep|>filename\\n<|fim_prefix|>{prefix}{middle}<|fim_suffix|>{suffix}<|fim_middle|>``
  (the repository header only where the vocabulary has those tokens), the prefix cut to its last
  ¾·n_batch tokens and the suffix to its first ¼·n_batch − 2 − len(middle), with n_batch 1024 as
  llama-server's ``--fim-qwen-*-default`` presets set it;
- greedy decoding of at most ``n_predict`` (128) tokens, stopped by an end-of-generation token,
  by the first line break when text follows the cursor on its line, and otherwise (llama-server's
  ``n_indent`` rule) by a new line indented less than the cursor's line, which is cut off;
- then ``s:fim_render``: trailing empty lines dropped, the leading whitespace trimmed on a
  whitespace-only cursor line, and the suggestion discarded when it only repeats the rest of the
  line or the next lines of the file.

Not reproduced: the ring buffer of extra chunks (this row has no cross-file context), and the
time limits (``t_max_prompt_ms``, ``t_max_predict_ms``: llama.vim shows what a fast machine
produced in 250 ms; here decoding runs to one of the stops above, so the row does not depend on
the machine's speed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from quality_holes import Hole
from quality_score import Outcome

N_PREFIX_LINES = 256
N_SUFFIX_LINES = 64
N_PREDICT = 128
MAX_LINE_SUFFIX = 8
N_BATCH = 1024
N_CTX = 2048

FIM_SPELLINGS = {  # llama.cpp finds these by name when the GGUF does not say
    "pre": ("<|fim_prefix|>", "<fim_prefix>", "<fim-prefix>", "<PRE>"),
    "suf": ("<|fim_suffix|>", "<fim_suffix>", "<fim-suffix>", "<SUF>"),
    "mid": ("<|fim_middle|>", "<fim_middle>", "<fim-middle>", "<MID>"),
    "rep": ("<|repo_name|>", "<reponame>", "<repo_name>"),
    "sep": ("<|file_sep|>", "<file_sep>"),
}
EOG_SPELLINGS = ("<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<fim_pad>",
                 "<reponame>", "<file_sep>", "<|eot_id|>", "<|end_of_text|>", "<EOT>")


@dataclass(frozen=True)
class LocalContext:
    """``s:fim_ctx_local``: what llama.vim sends for the cursor's position."""

    prefix: str
    middle: str
    suffix: str
    indent: int
    line_cur: str
    line_cur_suffix: str


def local_context(hole: Hole) -> LocalContext:
    lines = hole.text.split("\n")
    y = hole.line
    line_cur = lines[y]
    x = hole.column
    line_cur_prefix, line_cur_suffix = line_cur[:x], line_cur[x:]
    lines_prefix = lines[max(0, y - N_PREFIX_LINES):y]
    lines_suffix = lines[y + 1:y + 1 + N_SUFFIX_LINES]
    if not line_cur.strip():
        indent, line_cur_prefix, line_cur_suffix = 0, "", ""
    else:
        indent = len(line_cur) - len(line_cur.lstrip(" \t"))
    return LocalContext("\n".join(lines_prefix) + "\n", line_cur_prefix,
                        line_cur_suffix + "\n" + "\n".join(lines_suffix) + "\n", indent, line_cur, line_cur_suffix)


def indent_stop(text: str, n_indent: int) -> int | None:
    """llama-server's ``n_indent`` rule on the text so far: where to cut it (the start of the
    first line after a line break that is indented less than ``n_indent`` and has begun), or
    None to go on."""
    if n_indent <= 0:
        return None
    start = text.find("\n")
    while start >= 0:
        pos = start + 1
        width = 0
        while pos < len(text) and text[pos] in " \t":
            width += 1
            pos += 1
        if pos < len(text) and width < n_indent:
            return pos
        start = text.find("\n", start + 1)
    return None


def render(raw: str, hole: Hole, context: LocalContext) -> tuple[str, bool]:
    """``s:fim_render`` and ``llama#fim_accept``: the text inserted at the cursor, and whether
    accepting it re-indents the cursor's line."""
    content = raw.split("\n")
    while content and content[-1] == "":
        content.pop()
    if not content:
        return "", False
    lines = hole.text.split("\n")
    y, x = hole.line, hole.column
    line_cur = context.line_cur
    reindented = False
    if not line_cur.strip():
        lead = min(len(content[0]) - len(content[0].lstrip()), len(line_cur))
        reindented = lead < x
        line_cur, content[0] = content[0][:lead], content[0][lead:]
    line_cur_prefix, line_cur_suffix = line_cur[:x], line_cur[x:]

    def line(number: int) -> str:  # vim's getline(): "" past the end
        return lines[number] if 0 <= number < len(lines) else ""

    if len(content) == 1 and content[0] == "":
        return "", False
    if len(content) > 1 and content[0] == "" and content[1:] == lines[y + 1:y + len(content)]:
        return "", False
    if len(content) == 1 and content[0] == line_cur_suffix:
        return "", False
    cmp_y = y + 1
    while cmp_y < len(lines) - 1 and not line(cmp_y).strip():
        cmp_y += 1
    if line_cur_prefix + content[0] == line(cmp_y):
        if len(content) == 1:
            return "", False
        if len(content) == 2 and content[-1] == line(cmp_y + 1)[:len(content[-1])]:
            return "", False
        if len(content) > 2 and content[1:] == [line(n) for n in range(cmp_y + 1, cmp_y + len(content))]:
            return "", False
    text = "\n".join(content)
    if not (text + line_cur_suffix).strip():
        return "", False
    return text, reindented


@dataclass
class LlamaVimSystem:
    name: str
    description: str
    gguf: Path
    threads: int = 2
    warnings: list[str] = field(default_factory=list)
    model: str = ""

    async def start(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise RuntimeError("the llama.cpp row needs the benchmark-only llama-cpp-python==0.3.36: "
                               "python bench/llama_cpp_wheel.py --install (a source build with AMX off)") from exc
        self._llm = await asyncio.to_thread(Llama, model_path=str(self.gguf), n_ctx=N_CTX, n_batch=N_BATCH,
                                            n_ubatch=N_BATCH, n_threads=self.threads, verbose=False)
        self._fim = {role: self._special(spellings) for role, spellings in FIM_SPELLINGS.items()}
        missing = [role for role in ("pre", "suf", "mid") if self._fim[role] is None]
        if missing:
            raise RuntimeError(f"{self.gguf}: no FIM tokens ({', '.join(missing)}): llama.cpp's /infill needs a FIM model")
        self._eog = {self._llm.token_eos()} | {t for t in map(self._special, [(s,) for s in EOG_SPELLINGS]) if t is not None}
        name = self._llm.metadata.get("general.name", self.gguf.name)
        self.model = f"{name} ({self.gguf.name}) on llama-cpp-python {_version()}"

    def _special(self, spellings: tuple[str, ...]) -> int | None:
        for spelling in spellings:
            ids = self._llm.tokenize(spelling.encode(), add_bos=False, special=True)
            if len(ids) == 1 and self._llm.detokenize(ids, special=True).decode(errors="replace") == spelling:
                return ids[0]
        return None

    def prompt(self, context: LocalContext) -> list[int]:
        """``format_prompt_infill`` with no extra chunks."""
        tokenize = self._llm.tokenize
        prefix = tokenize(context.prefix.encode(), add_bos=False, special=False)
        suffix = tokenize(context.suffix.encode(), add_bos=False, special=False)
        middle = tokenize(context.middle.encode(), add_bos=False, special=True) if context.middle else []
        extra: list[int] = []
        if self._fim["rep"] is not None:
            extra += [self._fim["rep"], *tokenize(b"myproject\n", add_bos=False, special=False)]
        if self._fim["sep"] is not None:
            extra += [self._fim["sep"], *tokenize(b"filename\n", add_bos=False, special=False)]
        prefix = prefix[len(prefix) - min(len(prefix), 3 * (N_BATCH // 4)):]
        suffix = suffix[:min(len(suffix), max(0, N_BATCH // 4 - (2 + len(middle))))]
        ids = [self._fim["pre"], *prefix, *middle]
        if self._llm.metadata.get("tokenizer.ggml.add_bos_token") == "true":
            ids.insert(0, self._llm.token_bos())
        return [*extra, *ids, self._fim["suf"], *suffix, self._fim["mid"]]

    def generate(self, context: LocalContext) -> str:
        ids = self.prompt(context)
        single_line = bool(context.line_cur_suffix.strip())
        out: list[int] = []
        text = ""
        for token in self._llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if token in self._eog:
                break
            out.append(token)
            text = self._llm.detokenize(out).decode("utf-8", errors="ignore")
            if single_line and "\n" in text:
                return text.split("\n", 1)[0]
            cut = indent_stop(text, context.indent)
            if cut is not None:
                return text[:cut]
            if len(out) >= N_PREDICT:
                break
        return text

    async def complete(self, hole: Hole) -> Outcome:
        context = local_context(hole)
        started = time.perf_counter()
        if len(context.line_cur_suffix) > MAX_LINE_SUFFIX:
            return Outcome(hole, "", 0.0)  # llama.vim does not auto-trigger here
        try:
            raw = await asyncio.to_thread(self.generate, context)
        except Exception as exc:
            return Outcome(hole, "", (time.perf_counter() - started) * 1e3, f"{type(exc).__name__}: {exc}")
        latency = (time.perf_counter() - started) * 1e3
        text, reindented = render(raw, hole, context)
        return Outcome(hole, text, latency, reindented=reindented)

    async def stop(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()


def _version() -> str:
    import importlib.metadata
    return importlib.metadata.version("llama-cpp-python")
