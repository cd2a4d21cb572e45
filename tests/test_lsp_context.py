"""Other files' code reaches the prompt through the real server: didOpen feeds the context store,
a completion's prompt carries the repository head, the next keystroke's prompt reuses it from
the KV cache, and ``contextTokens: 0`` takes it out.

The server runs a tiny random Llama with the byte vocabulary of ``byte_vocab.py`` (Qwen's special
tokens, one token per byte), so the head's size in tokens is its length in bytes plus one per
special token, and the stats' prompt sizes can be checked to the token.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from byte_vocab import byte_tokenizer
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from test_lsp_support import change_document, inline, open_document, server_config, start, stats

LOG = Path(tempfile.gettempdir()) / "wizardcoder-test_lsp_context.log"
UTILS = "import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n"
MAIN = "from utils import area\n\nprint(area(2.0), "  # two lines of code: too few to be a chunk itself


@pytest.fixture(scope="module")
def tiny_qwen_like(tiny_model_factory, tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("tiny-qwen-like")
    shutil.copytree(tiny_model_factory("llama_gqa"), model, dirs_exist_ok=True)
    byte_tokenizer().save(model / "tokenizer.json")
    return model


async def test_the_prompt_carries_the_other_files_code_kept_across_keystrokes(tiny_qwen_like):
    client = await ClientServerConfig(server_command=server_config(LOG, "--model", str(tiny_qwen_like))
                                      .server_command).start()
    try:
        # Healing would take the cursor's last token off the prompt: the counts below are the prompt's
        # own (healing: test_token_healing.py).
        await start(client, {"maxNewTokens": 2, "debounceMs": 0, "promptTokens": 256, "contextTokens": 512,
                             "tokenHealing": False})
        open_document(client, "file:///tmp/utils.py", UTILS)
        open_document(client, "file:///tmp/main.py", MAIN)
        column = len("print(area(2.0), ")
        await inline(client, "file:///tmp/main.py", 2, column)
        change_document(client, "file:///tmp/main.py", 2, (2, column), (2, column), "a")  # a keystroke
        await inline(client, "file:///tmp/main.py", 2, column + 1)
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"contextTokens": 0}))
        await inline(client, "file:///tmp/main.py", 2, column + 1)
        first, typed, without = (await stats(client))["generations"][-3:]
        await client.shutdown_session()
    finally:
        await client.stop()
    # <|repo_name|>tmp\n <|file_sep|>utils.py\n{UTILS} <|file_sep|>main.py\n, before <|fim_prefix|>…
    head = 1 + len("tmp\n") + 1 + len("utils.py\n" + UTILS) + 1 + len("main.py\n")
    code = 3 + len(MAIN)  # <|fim_prefix|>{MAIN}<|fim_suffix|><|fim_middle|>: nothing after the cursor
    assert (first["promptTokens"], typed["promptTokens"], without["promptTokens"]) == (head + code, head + code + 1,
                                                                                     code + 1)
    assert typed["reusedTokens"] >= head + 1 + len(MAIN)  # the head and the prefix up to the cursor
