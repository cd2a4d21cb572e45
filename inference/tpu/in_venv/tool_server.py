"""A fork server for tpu-mlir's Python tools: pay their imports once, not once per piece.

``model_transform.py`` spends ~12 of its ~13 s importing (onnxruntime_extensions pulls in
transformers and torch); the conversion of one piece takes well under a second. This server
imports the tools' modules once, then runs each request in a forked child (which inherits the
loaded modules) as ``runpy.run_path(tool, run_name="__main__")``: exactly the command line's
code path, with the request's arguments, working directory and log file. Children run
concurrently; the client bounds how many.

Protocol (JSON lines): request ``{"id", "tool", "args", "cwd", "log", "timeout"}`` on stdin;
reply ``{"id", "rc", "timed_out", "seconds"}`` on stdout, written by a per-request watcher
process that waits for the tool (so a crash or a timeout still gets an answer). First line out:
``{"ready": true, "preload_s": …}``. EOF on stdin ends the server and its running tools.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

READY_FLAG = "WIZARDCODER_TPU_TOOL_SERVER"
TOOLS = ("model_transform.py", "model_deploy.py")
# Imported lazily inside the tools' main paths; these are the expensive ones.
HEAVY = ("transform.OnnxConverter", "tpu_mlir.python.tools.model_runner")


def _reexec_with_tpu_mlir_env() -> None:
    """tpu_mlir's __init__ sets LD_LIBRARY_PATH/PYTHONPATH in os.environ; the loader reads them
    only at process start, so start again with them (as tpu-mlir's console scripts do)."""
    if os.environ.get(READY_FLAG) == "1":
        return
    import tpu_mlir  # noqa: F401  (sets the environment)

    os.environ[READY_FLAG] = "1"
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])


def _tool_path(tool: str) -> str:
    if tool not in TOOLS:
        raise ValueError(f"not a served tool: {tool}")
    return os.path.join(os.environ["TPUC_ROOT"], "python", "tools", tool)


def _run_tool(request: dict) -> None:
    """In the grandchild: become the tool. Never returns."""
    os.setpgid(0, 0)  # its own process group, so a timeout takes its subprocesses too
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rc = 1
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.chdir(request["cwd"])
        tool = _tool_path(request["tool"])
        sys.argv = [tool, *request["args"]]
        print("$ " + " ".join([request["tool"], *request["args"]]), flush=True)
        import runpy

        try:
            runpy.run_path(tool, run_name="__main__")
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001  (the log is the report)
        traceback.print_exc()
        rc = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def _watch(request: dict, out_fd: int) -> None:
    """In the child: run the tool in a grandchild, wait (with the timeout), answer. Never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _run_tool(request)
    killed = False

    def stop(*_):  # the server is going away: take the tool with us
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    deadline = started + float(request.get("timeout") or 1e9)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline and not killed:
            killed = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    if os.WIFEXITED(status):
        rc = os.WEXITSTATUS(status)
    else:
        rc = 128 + os.WTERMSIG(status)
    try:  # any subprocess the tool left behind
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    reply = {"id": request["id"], "rc": rc, "timed_out": killed, "seconds": round(time.monotonic() - started, 2)}
    os.write(out_fd, (json.dumps(reply) + "\n").encode())  # one write, under PIPE_BUF: atomic
    os._exit(0)


def main() -> None:
    _reexec_with_tpu_mlir_env()
    out_fd = os.dup(1)
    os.dup2(2, 1)  # whatever the tools' imports print must not reach the protocol
    started = time.monotonic()
    import tpu_mlir  # noqa: F401
    import runpy

    for tool in TOOLS:  # module-level code only: the imports, not the tool's main
        runpy.run_path(_tool_path(tool), run_name="__wizardcoder_preload__")
    import importlib

    for module in HEAVY:
        importlib.import_module(module)
    os.write(out_fd, (json.dumps({"ready": True, "preload_s": round(time.monotonic() - started, 2)}) + "\n").encode())

    watchers: set[int] = set()
    for line in sys.stdin.buffer:
        _reap(watchers)
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _watch(request, out_fd)
        watchers.add(pid)
    _reap(watchers)
    for pid in watchers:  # still running: only our own children, never reaped, so never reused
        os.kill(pid, signal.SIGTERM)
    for pid in watchers:
        os.waitpid(pid, 0)


def _reap(watchers: set[int]) -> None:
    for pid in list(watchers):
        if os.waitpid(pid, os.WNOHANG)[0]:
            watchers.discard(pid)


if __name__ == "__main__":
    main()
