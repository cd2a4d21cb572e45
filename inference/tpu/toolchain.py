"""tpu-mlir, in a Python 3.10 venv of its own under the cache: found, built, or a clear error.

tpu-mlir 1.30.2 ships only as a Python 3.10 wheel and needs three fixes to run here, so the
project keeps it out of its own environment:

- ``torch``, ``psutil``, ``onnx``, ``onnxruntime`` and ``onnxsim`` are imported by
  ``model_transform.py`` but not declared;
- ``tpu_mlir/lib/third_party`` carries an old glibc (``libc.so.6``, ``libm.so.6``,
  ``libpthread.so.0``) that ``tpu_mlir/__init__.py`` puts on ``LD_LIBRARY_PATH``; the system's
  newer libexpat then fails with "GLIBC_2.36 not found". Those three files are moved aside.

A marker file in the venv records the inputs it was built from; a venv whose marker matches is
reused as is, anything else is rebuilt. Every tool then runs through the venv's own console
scripts (``model_transform.py``, ``model_deploy.py``, ``model_tool``), which set tpu-mlir's
environment the way its authors intended.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InferenceError
from ..paths import cache_dir

TPU_MLIR_VERSION = "1.30.2"
WHEEL_NAME = f"tpu_mlir-{TPU_MLIR_VERSION}-py3-none-any.whl"
# psutil, torch, onnx, onnxruntime, onnxsim: imported by model_transform.py's ONNX path, undeclared
# by the wheel (versions that read our IR-8/opset-17 pieces with the wheel's numpy 1.24 and
# protobuf 3.20, both pinned so that pip leaves them). setuptools<81: tpu_mlir/__init__.py imports
# pkg_resources, which setuptools 81 removed.
EXTRA_PACKAGES = ("psutil", "torch==2.13.0", "setuptools<81", "onnx==1.16.2", "onnxruntime==1.19.2",
                  "onnxsim==0.4.36", "numpy==1.24.3", "protobuf==3.20.3")
BUNDLED_GLIBC = ("libc.so.6", "libm.so.6", "libpthread.so.0")
MARKER = ".wizardcoder-tpu-toolchain.json"
RECIPE_VERSION = 3  # bump when the build steps below change


class ToolchainError(InferenceError):
    """tpu-mlir cannot be found, built or run."""


@dataclass(frozen=True)
class Toolchain:
    """A ready tpu-mlir venv."""

    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def package_dir(self) -> Path:
        return Path(glob.glob(str(self.venv / "lib" / "python3.10" / "site-packages" / "tpu_mlir"))[0])

    def script(self, name: str) -> Path:
        """A tpu-mlir console script (``model_transform.py``, ``model_deploy.py``, ``model_tool``)."""
        return self.venv / "bin" / name

    def env(self) -> dict[str, str]:
        """The environment for tools: the venv first on PATH, no stray Python settings of ours."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env.setdefault("OMP_NUM_THREADS", "1")  # tpu-mlir defaults to 4 threads per tool; we run tools in parallel
        return env

    def run(self, args: list[str], cwd: Path, log: Path, timeout: float | None = None,
            ok_codes: tuple[int, ...] = (0,)) -> None:
        """Run a tool, its output to ``log``; raise with the log's tail on failure."""
        with open(log, "ab") as out:
            out.write(("$ " + " ".join(args) + "\n").encode())
            out.flush()
            try:
                done = subprocess.run(args, cwd=cwd, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise ToolchainError(f"{Path(args[0]).name} timed out after {timeout:.0f} s (log: {log})") from None
        if done.returncode not in ok_codes:
            raise ToolchainError(f"{Path(args[0]).name} failed (exit {done.returncode}); last lines of {log}:\n"
                                 + tail(log))


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def toolchain_root() -> Path:
    return cache_dir() / f"tpu-mlir-{TPU_MLIR_VERSION}"


def _recipe(python: Path | None = None) -> dict:
    """What the venv is built from; a marker with other contents means rebuild."""
    return {"recipe": RECIPE_VERSION, "tpu_mlir": TPU_MLIR_VERSION, "extra": list(EXTRA_PACKAGES),
            "moved": list(BUNDLED_GLIBC), "python": "3.10"}


def find_python310() -> Path:
    """``$WIZARDCODER_TPU_PYTHON310``, else pyenv's 3.10.x, else ``python3.10`` on PATH."""
    override = os.environ.get("WIZARDCODER_TPU_PYTHON310")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToolchainError(f"WIZARDCODER_TPU_PYTHON310={override} is not an executable Python 3.10")
        return path
    roots = [os.environ.get("PYENV_ROOT"), os.path.expanduser("~/.pyenv")]
    if shutil.which("pyenv"):
        try:
            roots.insert(0, subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    looked = []
    for root in filter(None, roots):
        pattern = os.path.join(root, "versions", "3.10.*", "bin", "python")
        looked.append(pattern)
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[-1])
    which = shutil.which("python3.10")
    if which:
        return Path(which)
    raise ToolchainError("tpu-mlir needs Python 3.10 and none was found (looked in "
                         + ", ".join(looked + ["python3.10 on PATH"])
                         + "); install it (e.g. `pyenv install 3.10.13`) or set WIZARDCODER_TPU_PYTHON310")


def _wheel(log: Path) -> Path:
    """The tpu-mlir wheel in the shared wheel cache, downloaded for Python 3.10 if absent."""
    wheels = cache_dir() / "wheels"
    wheel = wheels / WHEEL_NAME
    if wheel.exists():
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    _say(f"downloading tpu-mlir=={TPU_MLIR_VERSION} (~312 MB) into {wheels}")
    _pip([sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.10",
          "--only-binary=:all:", "-d", str(wheels), f"tpu-mlir=={TPU_MLIR_VERSION}"], log,
         f"cannot download tpu-mlir=={TPU_MLIR_VERSION}")
    if not wheel.exists():
        raise ToolchainError(f"pip download did not produce {wheel} (see {log})")
    return wheel


def _pip(args: list[str], log: Path, what: str) -> None:
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(args) + "\n").encode())
        out.flush()
        try:
            done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ToolchainError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise ToolchainError(f"{what} (exit {done.returncode}); last lines of {log}:\n{tail(log, 15)}")


def _say(message: str) -> None:
    print(f"wizardcoder-tpu: {message}", file=sys.stderr, flush=True)


def _read_marker(venv: Path) -> dict | None:
    try:
        return json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _installed_ok(venv: Path) -> bool:
    """An existing venv (built by hand, or by an older run that lost its marker) that already has
    what the recipe would produce: adopt it rather than spend minutes rebuilding."""
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    probe = ("import importlib.metadata as m, sys; "
             f"sys.exit(0 if m.version('tpu_mlir') == '{TPU_MLIR_VERSION}' and m.version('psutil') "
             "and m.version('torch') and m.version('onnx') and m.version('onnxruntime') and m.version('onnxsim') "
             "and int(m.version('setuptools').split('.')[0]) < 81 else 1)")
    try:
        if subprocess.run([str(python), "-c", probe], capture_output=True, timeout=120).returncode != 0:
            return False
    except (OSError, subprocess.SubprocessError):
        return False
    third_party = glob.glob(str(venv / "lib" / "python3.10" / "site-packages" / "tpu_mlir" / "lib" / "third_party"))
    return bool(third_party) and not any((Path(third_party[0]) / lib).exists() for lib in BUNDLED_GLIBC)


def ensure_toolchain(build: bool = True) -> Toolchain:
    """The tpu-mlir venv, built on first use (a few minutes: a 312 MB wheel plus torch)."""
    root = toolchain_root()
    venv = root / "venv"
    recipe = _recipe()
    if _read_marker(venv) == recipe:
        return Toolchain(venv)
    if not build:
        raise ToolchainError(f"the tpu-mlir venv is missing ({venv}); run `wizardcoder-tpu compile` to build it")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and then reuse
        if _read_marker(venv) == recipe:
            return Toolchain(venv)
        if _installed_ok(venv):
            (venv / MARKER).write_text(json.dumps(recipe))
            return Toolchain(venv)
        _build(root, venv, recipe)
    return Toolchain(venv)


def _build(root: Path, venv: Path, recipe: dict) -> None:
    log = root / "build.log"
    log.write_text("")
    python = find_python310()
    wheel = _wheel(log)
    _say(f"building the tpu-mlir venv in {venv} (log: {log})")
    if venv.exists():
        shutil.rmtree(venv)
    _pip([str(python), "-m", "venv", str(venv)], log, f"cannot create a venv with {python}")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    _pip(pip + [str(wheel), *EXTRA_PACKAGES], log, "cannot install tpu-mlir into its venv")
    tc = Toolchain(venv)
    third_party = tc.package_dir / "lib" / "third_party"
    moved = root / "glibc-moved-aside"
    moved.mkdir(exist_ok=True)
    for lib in BUNDLED_GLIBC:
        if (third_party / lib).exists():
            os.replace(third_party / lib, moved / lib)
    # The smoke test: the C tool loads its libraries, the Python tools import (torch, psutil, mlir).
    # model_tool has no --help: it prints its usage and exits 1. A failed import or a missing
    # shared library also exits 1, so the usage text is what proves the binary ran.
    tc.run([str(tc.script("model_tool")), "--help"], root, log, timeout=120, ok_codes=(0, 1))
    if "--combine" not in tail(log, 40):
        raise ToolchainError(f"model_tool does not run in {venv}; last lines of {log}:\n{tail(log)}")
    tc.run([str(tc.script("model_transform.py")), "--help"], root, log, timeout=300)
    (venv / MARKER).write_text(json.dumps(recipe))
    _say("tpu-mlir venv ready")
