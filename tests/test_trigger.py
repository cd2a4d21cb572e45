"""The trigger rules (lsp/trigger.py) and maxTimeMs's cut (lsp/completion.py), as pure functions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from wizardcoder_tpu.lsp.completion import within_time
from wizardcoder_tpu.lsp.requests import DocumentRequests
from wizardcoder_tpu.lsp.settings import Settings, merge
from wizardcoder_tpu.lsp.trigger import Request, excluded, is_deletion, model_refusal, shows_cached

AUTO = Settings()


def auto(prefix: str, suffix: str = "\n", deleted: bool = False) -> Request:
    return Request(True, prefix, suffix, deleted)


def test_an_automatic_request_at_the_end_of_a_line_runs():
    assert model_refusal(AUTO, auto("def f(x):\n    return ", "\n")) is None
    assert model_refusal(AUTO, auto("x = foo(", ")\n")) is None  # a closing bracket is no word


def test_no_automatic_request_in_the_middle_of_a_word():
    assert "middle of a word" in model_refusal(AUTO, auto("x = fib", "onacci(3)\n"))
    assert "middle of a word" in model_refusal(AUTO, auto("x_", "1 = 2"))
    assert model_refusal(AUTO, auto("x = fib", " + 1\n")) is None  # the end of a word
    assert model_refusal(AUTO, auto("x = ", "fib\n")) is None  # the start of a word


def test_no_automatic_request_when_more_than_max_line_suffix_characters_follow():
    assert model_refusal(AUTO, auto("print(", "12345678\nmore text on the next line")) is None  # 8: allowed
    assert "9 characters follow" in model_refusal(AUTO, auto("print(", ")12345678\n"))
    assert model_refusal(AUTO, auto("print(", ")12345678")) is not None  # the last line, no break
    loose = replace(AUTO, max_line_suffix=20)
    assert model_refusal(loose, auto("print(", ")12345678\n")) is None
    assert model_refusal(replace(AUTO, max_line_suffix=0), auto("print(", ")\n")) is not None


def test_no_automatic_request_after_a_deletion_not_even_from_the_cache():
    request = auto("def f(x):\n    retur", "\n", deleted=True)
    assert model_refusal(AUTO, request) == "the last edit deleted text"
    assert not shows_cached(AUTO, request)
    assert shows_cached(AUTO, replace(request, automatic=False))


def test_manual_trigger_runs_the_model_only_when_asked():
    manual = replace(AUTO, trigger="manual")
    assert "manual" in model_refusal(manual, auto("x = ", "\n"))
    assert shows_cached(manual, auto("x = ", "\n"))  # typing on into a suggestion the user asked for
    assert model_refusal(manual, Request(False, "x = ", "\n", False)) is None


def test_an_invoked_request_ignores_every_automatic_rule():
    for request in (auto("x = fib", "onacci()\n"), auto("f(", "a_very_long_suffix)\n"), auto("x", "\n", True)):
        assert model_refusal(AUTO, replace(request, automatic=False)) is None


@pytest.mark.parametrize("path", [".env", ".env.local", "prod.env", "server.pem", "tls/server.key", "id_rsa",
                                  "id_rsa.pub", "id_ed25519", "keystore.jks", ".netrc", ".npmrc", ".git-credentials"])
def test_key_and_secret_files_are_excluded_by_default(path):
    assert excluded(AUTO, f"file:///home/u/project/{path}", "plaintext") is not None


@pytest.mark.parametrize("path", ["main.py", "environment.py", "keys.py", "env/main.py", "README.md", "pem.rs"])
def test_ordinary_files_are_not_excluded(path):
    assert excluded(AUTO, f"file:///home/u/project/{path}", "python") is None


def test_language_and_path_patterns_from_the_settings():
    settings, problems = merge(AUTO, {"disabledLanguages": ["markdown"], "disabledFiles": ["secrets/*", "*.lock"]})
    assert problems == []
    assert "disabledLanguages" in excluded(settings, "file:///p/README.md", "markdown")
    assert excluded(settings, "file:///p/README.md", "plaintext") is None
    assert "secrets/*" in excluded(settings, "file:///p/secrets/db.py", "python")
    assert excluded(settings, "file:///p/poetry.lock", "toml") is not None
    assert excluded(settings, "file:///p/.env", "sh") is None  # the user's list replaced the default one
    assert excluded(settings, "file:///p/a%20b.lock", "toml") is not None  # percent-decoded


def test_a_deletion_is_an_edit_that_only_removes():
    assert is_deletion("", range_is_empty=False)  # a backspace
    assert not is_deletion("x", range_is_empty=False)  # a replacement
    assert not is_deletion("x", range_is_empty=True)  # typing
    assert not is_deletion("", range_is_empty=None)  # a whole-document change says nothing


def test_the_document_remembers_whether_its_last_edit_deleted():
    requests = DocumentRequests()
    requests.changed("file:///a.py", deletion=True)
    assert requests.of("file:///a.py").after_deletion
    requests.changed("file:///a.py", deletion=False)
    assert not requests.of("file:///a.py").after_deletion


def test_max_time_keeps_the_complete_lines():
    assert within_time("a = 1\nb = 2\nc = ") == "a = 1\nb = 2"
    assert within_time("\n    a = 1\n    b") == "\n    a = 1"  # a leading break is no complete line
    assert within_time("a = 1") == "a = 1"


def test_the_trigger_settings_are_checked():
    settings, problems = merge(AUTO, {"trigger": "sometimes", "maxLineSuffix": -1, "maxTimeMs": 500})
    assert settings.trigger == "automatic" and settings.max_line_suffix == 8 and settings.max_time_ms == 500
    assert len(problems) == 2
