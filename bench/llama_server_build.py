"""Build llama.cpp's own HTTP server (``llama-server``) once, and keep it in the shared cache.

Why: the remote backend's ``llama.cpp`` protocols (``/completion``, ``/infill``) are llama.cpp's
server's, not llama-cpp-python's, so their end-to-end test needs that server. Its source is the
llama.cpp that llama-cpp-python's sdist vendors (``vendor/llama.cpp``): the same engine version as
the wheel of ``bench/llama_cpp_wheel.py``, from a file pinned by its sha256, with the same AMX
kernels off (they crash on this project's CPUs). Only the ``llama-server`` target is built, linked
statically (one file to keep), niced, on two jobs; an interrupted build resumes where it
stopped. The binary is cached under
``~/.cache/wizardcoder-tpu/llama-server/`` keyed by the sdist's sha256 and the CMake flags: later
runs, and other checkouts, find it at once.

Usage: ``python bench/llama_server_build.py [--sdist FILE]`` (prints the binary's path; the build's seconds are
kept beside it in ``build.json``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_cpp_wheel import CMAKE_ARGS, VERSION  # noqa: E402  (the wheel's version and AMX flags: one list)

SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # llama_cpp_python-0.3.36.tar.gz
CMAKE_FLAGS = (*CMAKE_ARGS.split(), "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON")
JOBS = 2


def cache_root() -> Path:
    return Path(os.environ.get("WIZARDCODER_TPU_CACHE", Path.home() / ".cache" / "wizardcoder-tpu"))


def cache_folder() -> Path:
    key = hashlib.sha256(f"{SDIST_SHA256}|{' '.join(CMAKE_FLAGS)}".encode()).hexdigest()[:12]
    return cache_root() / "llama-server" / f"llama.cpp-{VERSION}-{key}"


def cached_server() -> Path | None:
    """The built binary, or None (nothing is built here: see ``build_server``)."""
    binary = cache_folder() / "llama-server"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sdist(work: Path, local: Path | None) -> Path:
    """llama-cpp-python's sdist (``local``, or from PyPI through pip's own client), checked against the pin."""
    if local is not None:
        shutil.copy2(local, work / local.name)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "-d", str(work), f"llama-cpp-python=={VERSION}"], check=True)
    found = sorted(work.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise SystemExit(f"pip downloaded no sdist of llama-cpp-python {VERSION} into {work}")
    digest = _sha256(found[0])
    if digest != SDIST_SHA256:
        raise SystemExit(f"{found[0].name}: sha256 {digest}, not the pinned {SDIST_SHA256}")
    return found[0]


def build_server(local_sdist: Path | None = None) -> Path:
    """The cached binary, built if absent. The build folder is kept when a build is interrupted
    (on a loaded two-core machine it takes most of an hour), so that the next run resumes it; a
    lock keeps a second build of the same key waiting until the first is done."""
    binary = cached_server()
    if binary is not None:
        return binary
    folder = cache_folder()
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f".{folder.name}.build"
    with (folder.parent / f".{folder.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary = cached_server()
        if binary is not None:
            return binary
        started = time.monotonic()
        work.mkdir(exist_ok=True)
        source = next(work.glob("src/*/vendor/llama.cpp"), None)
        resumed = source is not None
        if source is None:
            sdist = _sdist(work, local_sdist)
            with tarfile.open(sdist) as archive:
                archive.extractall(work / "src", filter="data")
            sdist.unlink()
            source = next(work.glob("src/*/vendor/llama.cpp"))
        build = work / "build"
        nice = ["nice", "-n", "10"]
        if not (build / "build.ninja").exists():
            subprocess.run([*nice, "cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", *CMAKE_FLAGS],
                           check=True)
        subprocess.run([*nice, "cmake", "--build", str(build), "--target", "llama-server", "-j", str(JOBS)],
                       check=True)
        seconds = time.monotonic() - started
        used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the compilers' CPU time: what load does not change
        result = folder.parent / f".{folder.name}.out"
        shutil.rmtree(result, ignore_errors=True)
        result.mkdir()
        shutil.copy2(build / "bin" / "llama-server", result / "llama-server")
        (result / "build.json").write_text(json.dumps(
            {"sdist": f"llama_cpp_python-{VERSION}.tar.gz", "sha256": SDIST_SHA256, "flags": CMAKE_FLAGS,
             "jobs": JOBS, "resumed": resumed, "seconds": round(seconds),
             "cpu_seconds": round(used.ru_utime + used.ru_stime), "cpus": os.cpu_count(), "load": os.getloadavg()},
            indent=1) + "\n")
        os.rename(result, folder)
    shutil.rmtree(work.resolve(), ignore_errors=True)
    if work.is_symlink():
        work.unlink()
    binary = cached_server()
    assert binary is not None, f"the build left no llama-server in {folder}"
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="a copy of the sdist already downloaded (checked against the pin)")
    print(build_server(parser.parse_args().sdist))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
