"""The user's smoke test: the console script, as installed, on the real default model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The script installed beside this interpreter (the venv under test), whatever PATH says.
SCRIPT = str(Path(sys.executable).with_name("wizardcoder-tpu"))


def run(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def test_complete_prints_a_completion(qwen_model):
    done = run("complete", "def is_prime(n):")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("def is_prime(n):")
    completion = done.stdout[len("def is_prime(n):"):]
    assert completion.strip(), "no completion printed"
    assert "return" in completion


def test_complete_reads_stdin_and_prints_only_the_completion(qwen_model):
    done = run("complete", "--completion-only", "--single-line", "--max-tokens", "16",
               stdin="import numpy as")
    assert done.returncode == 0, done.stderr
    assert "\n" not in done.stdout.rstrip("\n")
    assert "stop:" in done.stderr


def test_complete_with_a_missing_model_says_so():
    done = run("complete", "--model", "/nonexistent/model.gguf", "x")
    assert done.returncode == 1
    assert "model not found: /nonexistent/model.gguf" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["serve", "complete", "fetch"])
def test_every_subcommand_has_help(command):
    done = run(command, "--help", timeout=60)
    assert done.returncode == 0
    assert "usage: wizardcoder-tpu " + command in done.stdout


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "wizardcoder_tpu", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "serve" in done.stdout


def test_complete_with_and_without_speculation_prints_the_same(smollm2_model):
    prompt = "def add(a, b):\n    return a + b\n\n\ndef add3(a, b, c):\n    return"
    runs = [run("complete", "--model", "smollm2-135m", "--max-tokens", "24", *flag, prompt)
            for flag in (("--speculate", "8"), ())]  # on, and the default (off)
    assert all(done.returncode == 0 for done in runs), runs[0].stderr + runs[1].stderr
    assert runs[0].stdout == runs[1].stdout
    assert "drafts 0/0 accepted" in runs[1].stderr and "drafts 0/0" not in runs[0].stderr
