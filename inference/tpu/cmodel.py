"""Pieces on the cmodel simulator: the compiled bmodel, run by tpu-mlir's own Python runtime.

tpu-mlir's runtime module (``pyruntime_bm``) exists only for its Python 3.10, so the nets run in
a server process in tpu-mlir's venv (``in_venv/cmodel_server.py``); this class is its client and
has the same ``run(net, feeds)`` as ``stepper.OrtPieces``, so ``stepper.generate`` drives either.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from .in_venv import wire
from .manifest import Manifest
from .toolchain import Toolchain, ToolchainError, ensure_toolchain, tail

SERVER = Path(__file__).resolve().parent / "in_venv" / "cmodel_server.py"


class CmodelServer:
    """One simulator process; several bmodels may be loaded into it."""

    def __init__(self, toolchain: Toolchain | None = None, log: Path | None = None):
        self.tc = toolchain or ensure_toolchain()
        self.log = log or self.tc.venv.parent / "cmodel-server.log"
        self._log_file = open(self.log, "ab")
        self._proc = subprocess.Popen([str(self.tc.python), str(SERVER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log_file, env=self.tc.env())

    def _call(self, header: dict, arrays: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
        try:
            wire.send(self._proc.stdin, header, arrays)
            reply, out = wire.receive(self._proc.stdout)
        except (EOFError, BrokenPipeError) as exc:
            raise ToolchainError(f"the cmodel simulator exited ({exc}); last lines of {self.log}:\n"
                                 f"{tail(self.log)}") from None
        if "error" in reply:
            raise ToolchainError(f"cmodel: {reply['error']} (log: {self.log})")
        return reply, out

    def load(self, bmodel: Path) -> tuple[int, list[str]]:
        reply, _ = self._call({"op": "load", "path": str(Path(bmodel).resolve())})
        return reply["model"], reply["nets"]

    def run(self, model: int, net: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The net's outputs in its order (tpu-mlir renames them; the order is the ONNX one)."""
        reply, out = self._call({"op": "run", "model": model, "net": net}, feeds)
        return [out[name] for name in reply["outputs"]]

    def unload(self, model: int) -> None:
        self._call({"op": "close", "model": model})

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log_file.close()

    def __enter__(self) -> "CmodelServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CmodelPieces:
    """A compiled model directory (``*.bmodel`` + ``manifest.json``) on the simulator."""

    def __init__(self, bmodel: str | Path, server: CmodelServer | None = None):
        self.bmodel = Path(bmodel)
        self.manifest = Manifest.load(self.bmodel.parent)
        self._own = server is None
        self.server = server or CmodelServer()
        self.model, self.nets = self.server.load(self.bmodel)

    def run(self, net: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if net not in self.nets:
            raise KeyError(f"{self.bmodel} has no net {net!r}")
        spec = self.manifest.piece(net)
        arrays = {t["name"]: np.ascontiguousarray(feeds[t["name"]], dtype=t["dtype"]) for t in spec["inputs"]}
        out = self.server.run(self.model, net, arrays)
        if len(out) != len(spec["outputs"]):
            raise ToolchainError(f"{self.bmodel}: {net} has {len(out)} outputs, the manifest says {len(spec['outputs'])}")
        return {t["name"]: value.reshape(t["shape"]) for t, value in zip(spec["outputs"], out)}

    def close(self) -> None:
        if self._own:
            self.server.close()
        else:
            self.server.unload(self.model)

    def __enter__(self) -> "CmodelPieces":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
