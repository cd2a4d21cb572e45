"""inference/native_stdout.py: native writes to descriptor 1 reach stderr, Python's reach stdout.

Each case runs in a fresh interpreter: the move is for the life of a process, and pytest's own
descriptors must stay as they are.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

NATIVE_AND_PYTHON = r"""
import ctypes, os, subprocess, sys, threading
from wizardcoder_tpu.inference.native_stdout import protect_stdout
print("before")
assert protect_stdout()
libc = ctypes.CDLL(None)
libc.printf(b"printf from C\n")
libc.fflush(None)
os.write(1, b"write(1) from C\n")
thread = threading.Thread(target=lambda: os.write(1, b"write(1) from another thread\n"))
thread.start(); thread.join()
subprocess.run(["echo", "a child without stdout="])
print("python print")
sys.stdout.buffer.write(b"python bytes\n")
assert protect_stdout()  # idempotent
print("after", file=sys.__stdout__)
"""


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "python -u"])
def test_native_output_goes_to_stderr_and_python_output_to_stdout(unbuffered):
    done = subprocess.run([sys.executable, *(["-u"] if unbuffered else []), "-c", NATIVE_AND_PYTHON],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"before\npython print\npython bytes\nafter\n"
    for native in (b"printf from C\n", b"write(1) from C\n", b"write(1) from another thread\n",
                   b"a child without stdout=\n"):
        assert native in done.stderr, done.stderr


def test_a_replaced_sys_stdout_is_left_alone():
    """pytest's capture or an embedding application owns the descriptors: nothing moves."""
    code = r"""
import io, os, sys
from wizardcoder_tpu.inference.native_stdout import protect_stdout
sys.stdout = io.StringIO()
assert protect_stdout() is False
os.write(1, b"still descriptor 1\n")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"still descriptor 1\n"
