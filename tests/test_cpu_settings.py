"""The CPU backend's settings (weights, threads) and its manners on a shared machine."""

from __future__ import annotations

import os
import subprocess
import sys
from argparse import Namespace

from wizardcoder_tpu.inference.backends.threads import physical_cores
from wizardcoder_tpu.lsp.settings import Settings, from_command_line, merge


def test_weights_and_threads_settings():
    settings, problems = merge(Settings(), {"weights": "int4", "threads": 1})
    assert problems == [] and (settings.weights, settings.threads) == ("int4", 1)
    assert settings.model_key != Settings().model_key  # a change reloads the model
    kept, problems = merge(settings, {"weights": "int3", "threads": -1})
    assert (kept.weights, kept.threads) == ("int4", 1) and len(problems) == 2
    cli = from_command_line(Namespace(model="default", backend="cpu", weights="f32", threads=2))
    assert (cli.weights, cli.threads) == ("f32", 2)


def test_one_thread_per_physical_core():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_onnxruntime_writes_nothing_under_home(tiny_model_factory, tmp_path):
    """onnxruntime writes a telemetry device id to ~/.cache/Microsoft/DeveloperTools/ unless
    ORT_DISABLE_TELEMETRY is set before it is imported (issue 14, item 10)."""
    home = tmp_path / "home"
    home.mkdir()
    code = ("from wizardcoder_tpu.inference.backends.cpu import CPUBackend\n"
            "from wizardcoder_tpu.inference.weights import open_checkpoint\n"
            f"CPUBackend(open_checkpoint({str(tiny_model_factory('llama_gqa'))!r}), threads=1).forward([1, 2, 3])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env |= {"HOME": str(home), "WIZARDCODER_TPU_CACHE": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    assert not (home / ".cache" / "Microsoft").exists()
