"""Runs bmodel nets on the cmodel simulator with tpu-mlir's own Python runtime (``pyruntime_bm``).

The same calls as tpu-mlir's ``model_runner.py`` (which ``model_deploy.py --test_input`` uses),
kept alive across calls: a bmodel is loaded once and its nets run many times, which a token-by-
token generation needs. Speaks ``wire.py`` on stdin/stdout:

- ``{"op": "load", "path"}`` → ``{"model": id, "nets": [...]}``
- ``{"op": "run", "model", "net"}`` + input arrays → ``{"outputs": [names in net order]}`` + the
  output arrays (float outputs as float32). tpu-mlir decorates output names (``hidden`` becomes
  ``hidden_Gather_f32``), so callers match outputs by position.
- ``{"op": "close", "model"}`` → ``{}``

Errors come back as ``{"error": "..."}``; EOF on stdin ends the server.
"""

from __future__ import annotations

import os
import sys
import traceback

READY_FLAG = "WIZARDCODER_TPU_CMODEL_SERVER"


def _reexec_with_tpu_mlir_env() -> None:
    """The runtime's libraries are found through LD_LIBRARY_PATH, which tpu_mlir's __init__ sets
    in os.environ; the loader reads it only at process start."""
    if os.environ.get(READY_FLAG) == "1":
        return
    import tpu_mlir  # noqa: F401

    os.environ[READY_FLAG] = "1"
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])


class Runner:
    def __init__(self):
        import tpu_mlir  # noqa: F401  (sys.path for tpu_mlir.python.*)
        from tpu_mlir.python.tools import model_runner as mr

        self.mr = mr
        self.models: dict[int, object] = {}
        self.nets: dict[tuple[int, str], object] = {}  # a Net binds device buffers: make each once
        self.pyrt = None

    def load(self, path: str) -> dict:
        mr = self.mr
        chip = mr.get_chip_from_model(path)
        is_rvti = mr.get_kernel_mode_from_model(path) == "1"
        from filelock import FileLock

        with FileLock("/tmp/cmodel_so.lock"):  # the lock tpu-mlir's own runner takes
            mr.link_cmodel_so(chip, is_rvti)
            mr.link_custom_so(chip)
            mr.link_bmlib_so(chip)
            import importlib

            self.pyrt = importlib.import_module("pyruntime_bm")
            mr.bind_cmodel_so(chip, is_rvti)
        model = self.pyrt.Model(path, 0, "")
        handle = len(self.models) + 1
        self.models[handle] = model
        return {"model": handle, "nets": list(model.networks)}

    def run(self, handle: int, net_name: str, feeds: dict):
        import numpy as np
        from tpu_mlir.python.utils.lowering import bf16_to_fp32, lowering

        key = (handle, net_name)
        if key not in self.nets:
            self.nets[key] = self.models[handle].Net(net_name)
        net = self.nets[key]
        for tensor in net.inputs:
            if tensor.name not in feeds:
                raise KeyError(f"{net_name}: input {tensor.name!r} not given (have {sorted(feeds)})")
            value = feeds[tensor.name]
            if int(np.prod(value.shape)) != int(np.prod(tensor.data.shape)):
                raise ValueError(f"{net_name}.{tensor.name}: shape {list(value.shape)}, the net wants "
                                 f"{list(tensor.data.shape)}")
            tensor.data.reshape(-1)[:] = lowering(value, pdtype=tensor.dtype, pshape=value.shape,
                                                  pzero_point=tensor.qzero_point, pscale=tensor.qscale).flatten()
        net.forward()
        outputs = {}
        for tensor in net.outputs:
            if tensor.dtype == "f16":
                outputs[tensor.name] = np.array(tensor.data.astype(np.float32))
            elif tensor.dtype == "bf16":
                outputs[tensor.name] = bf16_to_fp32(tensor.data)
            else:
                outputs[tensor.name] = np.array(tensor.data)
        return outputs


def main() -> None:
    _reexec_with_tpu_mlir_env()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire

    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the runtime prints; the protocol owns the real stdout
    runner = Runner()
    while True:
        try:
            header, arrays = wire.receive(inp)
        except EOFError:
            break
        try:
            op = header["op"]
            if op == "load":
                wire.send(out, runner.load(header["path"]))
            elif op == "run":
                outputs = runner.run(header["model"], header["net"], arrays)
                wire.send(out, {"outputs": list(outputs)}, outputs)
            elif op == "close":
                runner.nets = {k: v for k, v in runner.nets.items() if k[0] != header["model"]}
                runner.models.pop(header["model"], None)
                wire.send(out, {})
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # noqa: BLE001  (reported to the client, which raises)
            traceback.print_exc()
            wire.send(out, {"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
