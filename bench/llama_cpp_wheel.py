"""Build llama-cpp-python from source once, and keep the wheel in the shared cache.

llama.cpp is the reference engine of ``bench/engine.py``. Its prebuilt wheels enable the AMX
kernels, which crash on this project's CPUs, so it is built from the sdist with them off. The
build takes many minutes on two shared cores, so the wheel is cached under
``~/.cache/wizardcoder-tpu/wheels/`` keyed by the version and the CMake flags: later runs, and
other checkouts, install it in seconds.

Usage: ``python bench/llama_cpp_wheel.py [--install]`` (prints the wheel's path).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VERSION = "0.3.36"
CMAKE_ARGS = "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"


def cache_folder() -> Path:
    root = Path(os.environ.get("WIZARDCODER_TPU_CACHE", Path.home() / ".cache" / "wizardcoder-tpu"))
    key = hashlib.sha256(f"{VERSION}|{CMAKE_ARGS}".encode()).hexdigest()[:12]
    return root / "wheels" / f"llama-cpp-python-{VERSION}-{key}"


def cached_wheel() -> Path | None:
    wheels = sorted(cache_folder().glob("llama_cpp_python-*.whl"))
    return wheels[0] if wheels else None


def build_wheel() -> Path:
    """The cached wheel, built (niced, in a private folder renamed into place) if absent."""
    wheel = cached_wheel()
    if wheel is not None:
        return wheel
    folder = cache_folder()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    subprocess.run(["nice", "-n", "10", sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary",
                    "llama-cpp-python", "-w", str(work), f"llama-cpp-python=={VERSION}"], env=env, check=True)
    try:
        os.rename(work, folder)
    except OSError:
        if cached_wheel() is None:
            raise
    wheel = cached_wheel()
    assert wheel is not None, f"pip built no wheel into {folder}"
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="pip install the wheel into this Python")
    args = parser.parse_args()
    wheel = build_wheel()
    if args.install:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", str(wheel)], check=True)
    print(wheel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
