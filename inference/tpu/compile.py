"""``wizardcoder-tpu compile``: an export directory → one ``.bmodel`` (+ manifest + tokenizer).

Per piece, in its own work directory: ``model_transform.py`` (ONNX → top MLIR),
``model_deploy.py --chip bm1684x`` (→ a one-net bmodel), then a check on the cmodel simulator
against onnxruntime (``validate.py``). Then ``model_tool --combine`` merges the pieces, in
manifest order, into one bmodel.

- Parallel: ``jobs`` pieces at a time (each tool holds about one piece's weights, in f32, a few
  times over: for WizardCoder-15B ~1.4 GB per block, so the default of 2 fits 64 GB easily).
- Resumable: a piece whose stamp carries the current key (a hash of its ONNX and weights, the
  options and the tool versions) is skipped; an interrupted compile redoes only unfinished pieces.
- Disk: a piece's intermediates (f32 weight copies) are deleted once its bmodel passed the check.
- The tools run through ``tool_server.py``: tpu-mlir's imports (~12 s) are paid once, not per piece.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..atomic import replacing, write_text
from ..errors import InferenceError
from .manifest import MANIFEST, Manifest, sha256_file
from .toolchain import TPU_MLIR_VERSION, Toolchain, ensure_toolchain

COMPILE_VERSION = "3"  # bump when what a piece's compile produces changes
CHIP = "bm1684x"
GROUP_SIZE = 64
# --quantize → model_deploy's mode: weights in int8/int4 (per group of 64 for int4), activations f16.
MODES = {"f16": "F16", "int8": "W8F16", "int4": "W4F16"}
NUM_DEVICES = (1, 2, 4, 8)
STAMP = "done.json"
TRANSFORM_TIMEOUT = 1800.0
DEPLOY_TIMEOUT = 3600.0  # a WizardCoder-15B block in int4 on 2 cores is minutes; 1 h is the stuck bound


class CompileError(InferenceError):
    """A compile cannot proceed, or a compiled piece does not match its ONNX."""


VALIDATE = ("all", "decode", "none")


@dataclass(frozen=True)
class Options:
    quantize: str = "f16"
    num_device: int = 1
    validate: str = "all"  # all | decode (skip block_i / block_chunk_i: their simulation grows with rows) | none

    @property
    def mode(self) -> str:
        return MODES[self.quantize]

    def deploy_args(self) -> list[str]:
        args = ["--quantize", self.mode, "--chip", CHIP]
        if self.quantize == "int4":
            args += ["--q_group_size", str(GROUP_SIZE)]
        if self.num_device > 1:
            args += ["--num_device", str(self.num_device)]
        return args

    @property
    def tag(self) -> str:
        return f"{self.quantize}-{self.num_device}dev"

    def checks(self, piece: dict) -> bool:
        """Whether ``piece`` is run on the simulator. A multi-device bmodel needs that many
        devices, which the cmodel does not give; ``decode`` skips the N-row and K-row blocks (on
        the cmodel a SmolLM2 block of 128 rows takes ~10 s, a WizardCoder-15B block of 512 rows
        would take about an hour)."""
        if self.num_device > 1 or self.validate == "none":
            return False
        return self.validate == "all" or piece["kind"] not in ("block", "block_chunk")


def check_options(quantize: str, num_device: int, jobs: int, validate: str = "all") -> Options:
    if quantize not in MODES:
        raise CompileError(f"--quantize must be one of {', '.join(MODES)}, not {quantize!r}")
    if num_device not in NUM_DEVICES:
        raise CompileError(f"--num-device must be one of {', '.join(map(str, NUM_DEVICES))}, not {num_device}")
    if jobs < 1:
        raise CompileError(f"--jobs must be at least 1, not {jobs}")
    if validate not in VALIDATE:
        raise CompileError(f"--validate must be one of {', '.join(VALIDATE)}, not {validate!r}")
    return Options(quantize, num_device, validate)


def input_shapes(piece: dict) -> str:
    return "[" + ",".join("[" + ",".join(map(str, t["shape"])) + "]" for t in piece["inputs"]) + "]"


def piece_key(manifest: Manifest, piece: dict, options: Options) -> str:
    """What a piece's bmodel depends on; the manifest already holds the files' sha256. (Not the
    validation mode: a check is added to a stamp without rebuilding.)"""
    parts = [COMPILE_VERSION, TPU_MLIR_VERSION, CHIP, options.tag, options.mode,
             manifest.files[piece["onnx"]]["sha256"], manifest.files[piece["weights"]]["sha256"], input_shapes(piece)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1) + "\n")


class _Compiler:
    """One compile run: the work list, the shared tool server, the progress line."""

    def __init__(self, export_dir: Path, manifest: Manifest, options: Options, out: Path, work: Path,
                 tc: Toolchain, say: Callable[[str], None]):
        self.export_dir, self.m, self.options, self.out, self.work, self.tc, self.say = (
            export_dir, manifest, options, out, work, tc, say)
        self.lock = threading.Lock()
        self.done = 0
        self.tools = None
        self.ort = None

    def built(self, piece: dict) -> dict | None:
        """The piece's stamp if its bmodel is current."""
        stamp = _read_json(self.work / piece["name"] / STAMP)
        bmodel = self.work / piece["name"] / f"{piece['name']}.bmodel"
        if stamp and stamp.get("key") == piece_key(self.m, piece, self.options) and bmodel.exists():
            return stamp
        return None

    def pending(self) -> list[dict]:
        """Pieces to build or to check (the rest are reported as skipped)."""
        todo = []
        for piece in self.m.pieces:
            stamp = self.built(piece)
            if stamp and (stamp.get("similarity") or not self.options.checks(piece)):
                self.done += 1
            else:
                todo.append(piece)
        return todo

    def piece(self, piece: dict) -> dict:
        name = piece["name"]
        d = self.work / name
        stamp = self.built(piece)
        if stamp is None:
            stamp = self.build(piece, d)
            _write_json(d / STAMP, stamp)
            steps = f"transform {stamp['transform_s']:.1f} s, deploy {stamp['deploy_s']:.1f} s"
        else:
            steps = "built before"
        if self.options.checks(piece) and not stamp.get("similarity"):
            t0 = time.monotonic()
            stamp["similarity"] = self.check(piece, d / f"{name}.bmodel")
            stamp["check_s"] = round(time.monotonic() - t0, 2)
            _write_json(d / STAMP, stamp)
            steps += f", check {stamp['check_s']:.1f} s"
        with self.lock:
            self.done += 1
            shown = ", ".join(f"{k} {v:.4f}" for k, v in stamp.get("similarity", {}).items())
            self.say(f"[{self.done}/{len(self.m.pieces)}] {name}: {steps}" + (f", similarity {shown}" if shown else ""))
        return stamp

    def build(self, piece: dict, d: Path) -> dict:
        """model_transform + model_deploy in a fresh work directory; only the bmodel is kept."""
        name = piece["name"]
        shutil.rmtree(d, ignore_errors=True)  # leftovers of an interrupted run
        d.mkdir(parents=True)
        log = d / "compile.log"
        onnx_path = (self.export_dir / piece["onnx"]).resolve()
        # --do_onnx_sim "": no onnxsim/ConstantFolding pass. The pieces have nothing to fold, and
        # the pass copies the whole graph through protobuf (a 2 GB limit, minutes for a 15B block);
        # it took 60% of the transform time of SmolLM2's lm_head. (The flag is argparse type=bool.)
        t_transform = self.tools.run(
            "model_transform.py", ["--model_name", name, "--model_def", str(onnx_path), "--input_shapes",
                                   input_shapes(piece), "--do_onnx_sim", "", "--mlir", f"{name}.mlir"],
            d, log, TRANSFORM_TIMEOUT)
        t_deploy = self.tools.run("model_deploy.py", ["--mlir", f"{name}.mlir", *self.options.deploy_args(),
                                                      "--model", f"{name}.bmodel"], d, log, DEPLOY_TIMEOUT)
        for f in d.iterdir():  # keep the bmodel and the logs; the rest are f32 weight copies
            if f.name not in (f"{name}.bmodel", "compile.log", "cmodel.log"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        return {"key": piece_key(self.m, piece, self.options), "transform_s": round(t_transform, 2),
                "deploy_s": round(t_deploy, 2), "similarity": {}}

    def check(self, piece: dict, bmodel: Path) -> dict[str, float]:
        """The piece on the simulator against onnxruntime; raises below the threshold."""
        from .validate import THRESHOLDS, compare, head_logits, piece_inputs

        name = piece["name"]
        feeds = piece_inputs(piece, self.m)
        reference = self.ort.run(name, feeds)
        self.ort.release(name)  # one piece's weights in memory at a time, not the model's
        ref_logits = head_logits(piece["kind"], feeds, self.ort.run)
        if ref_logits is not None:
            self.ort.release("lm_head_logits")
        # A simulator per check, closed at once: an open cmodel device spins a thread at ~80% of a
        # core even while idle, which an idle simulator per worker would steal from the tools.
        from .cmodel import CmodelServer

        with CmodelServer(self.tc, bmodel.parent / "cmodel.log") as sim:
            model, _ = sim.load(bmodel)
            got = sim.run(model, name, feeds)
        outputs = {t["name"]: value.reshape(t["shape"]) for t, value in zip(piece["outputs"], got)}
        scores = compare(outputs, reference, ref_logits, feeds)
        threshold = THRESHOLDS[self.options.quantize]
        bad = {k: v for k, v in scores.items() if not v >= threshold}
        if bad:
            raise CompileError(f"{name} ({self.options.tag}) differs from onnxruntime on the simulator: "
                               + ", ".join(f"{k} similarity {v:.4f} < {threshold}" for k, v in bad.items())
                               + f" (work dir {bmodel.parent})")
        return scores


def default_out(export_dir: Path, quantize: str, num_device: int) -> Path:
    return export_dir / f"bmodel-{quantize}-{num_device}dev"


def compile_export(export_dir: str | Path, quantize: str = "f16", num_device: int = 1, jobs: int = 2,
                   out: str | Path | None = None, validate: str = "all",
                   log: Callable[[str], None] | None = None) -> Path:
    """Compile an export into ``out`` (default ``EXPORT/bmodel-{quantize}-{n}dev``); returns the
    ``.bmodel`` path, with ``manifest.json`` and ``tokenizer.json`` beside it.

    ``validate``: ``all`` runs each piece on the cmodel simulator against onnxruntime, ``decode``
    all but the N-row and K-row blocks, ``none`` nothing (multi-device bmodels are never run: the
    simulator has one device)."""
    say = log or (lambda msg: print(f"compile: {msg}", file=sys.stderr, flush=True))
    options = check_options(quantize, num_device, jobs, validate)
    export_dir = Path(export_dir)
    manifest = Manifest.load(export_dir)
    manifest.verify_sizes(export_dir)
    out = Path(out) if out else default_out(export_dir, quantize, num_device)
    work = export_dir / ".compile" / options.tag
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    tc = ensure_toolchain()
    started = time.monotonic()

    c = _Compiler(export_dir, manifest, options, out, work, tc, say)
    todo = c.pending()
    if c.done:
        say(f"{c.done} of {len(manifest.pieces)} pieces current, skipped")
    if todo:
        _compile_pieces(c, todo, jobs)
    bmodel = _combine(c)
    say(f"{bmodel} ({bmodel.stat().st_size / 2**20:.1f} MiB) in {time.monotonic() - started:.1f} s")
    return bmodel


def _compile_pieces(c: _Compiler, todo: list[dict], jobs: int) -> None:
    from .stepper import OrtPieces
    from .tool_server import ToolServer

    c.say(f"compiling {len(todo)} pieces ({c.options.tag}, {c.options.mode}, validate {c.options.validate}), "
          f"{jobs} at a time")
    errors: list[BaseException | None] = []
    with ToolServer(c.tc, c.work / "tool-server.log") as tools:
        c.tools = tools
        c.ort = OrtPieces(c.export_dir)
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(c.piece, p) for p in todo]
            errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        if len(failed) > 1:
            c.say(f"{len(failed)} pieces failed; the first:")
        raise failed[0]


def _combine(c: _Compiler) -> Path:
    m, options = c.m, c.options
    name = f"{m.architecture}-seq{m.seq_len}-{options.quantize}-{options.num_device}dev.bmodel"
    bmodel = c.out / name
    stamps = {p["name"]: _read_json(c.work / p["name"] / STAMP) for p in m.pieces}
    key = hashlib.sha256("|".join(s["key"] for s in stamps.values()).encode()).hexdigest()
    previous = Manifest.load(c.out) if (c.out / MANIFEST).exists() else None
    if not (previous and previous.compiled.get("key") == key and bmodel.exists()
            and bmodel.stat().st_size == previous.files.get(name, {}).get("bytes")):
        t0 = time.monotonic()
        parts = [str(c.work / p["name"] / f"{p['name']}.bmodel") for p in m.pieces]
        with replacing(bmodel) as tmp:
            c.tc.run([str(c.tc.script("model_tool")), "--combine", *parts, "-o", str(tmp)], c.work,
                     c.work / "combine.log", timeout=TRANSFORM_TIMEOUT)
        c.say(f"combined {len(parts)} nets into {bmodel.name} ({time.monotonic() - t0:.1f} s)")
    nets = check_interfaces(bmodel, m, c.tc)
    files = {name: {"sha256": sha256_file(bmodel), "bytes": bmodel.stat().st_size}}
    if m.tokenizer:
        shutil.copyfile(c.export_dir / m.tokenizer, c.out / m.tokenizer)
        files[m.tokenizer] = m.files[m.tokenizer]
    compiled = {
        "key": key, "bmodel": name, "chip": CHIP, "quantize": options.quantize, "mode": options.mode,
        "q_group_size": GROUP_SIZE if options.quantize == "int4" else None, "num_device": options.num_device,
        "tpu_mlir": TPU_MLIR_VERSION, "export_key": m.export_key,
        "outputs": "by position: tpu-mlir renames a net's outputs (hidden_out → …_f32); the order is the table's",
        "nets": nets,
        "validate": options.validate,
        "pieces": {p: {k: s.get(k) for k in ("transform_s", "deploy_s", "check_s", "similarity")}
                   for p, s in stamps.items()},
    }
    Manifest(**{**m.__dict__, "files": files, "compiled": compiled}).save(c.out)
    return bmodel


def net_interfaces(info: str) -> dict[str, dict]:
    """``model_tool --info`` text → {net: {"stages", "devices", "inputs": [names], "outputs": [names]}}.

    Two layouts: a 1-device net lists ``stage N`` blocks (names of the first are kept); a
    multi-device net is a ``cascade`` with no stages and every tensor once per device
    (``devid(1) hidden``; device 0's are kept, and it counts as one stage)."""
    nets: dict[str, dict] = {}
    devices = 1
    current: dict | None = None
    for line in info.splitlines():
        line = line.strip()
        if found := re.search(r"device num\s*:\s*(\d+)", line, re.I):
            devices = int(found.group(1))
        if found := re.match(r"net(?: \d+)?: \[(\S+)\]\s*(\w*)", line):
            cascade = found.group(2) == "cascade"
            current = nets.setdefault(found.group(1), {"stages": int(cascade), "inputs": [], "outputs": []})
        elif current is not None and line.startswith("stage "):
            current["stages"] += 1
        elif current is not None and current["stages"] == 1 and line.startswith(("input: ", "output: ")):
            side, rest = line.split(": ", 1)
            device = re.match(r"devid\((\d+)\)\s+", rest)
            if device:
                rest = rest[device.end():]
            if not device or device.group(1) == "0":
                current[side + "s"].append(rest.split(",")[0])
    for net in nets.values():
        net["devices"] = devices
    return nets


def check_interfaces(bmodel: Path, m: Manifest, tc: Toolchain) -> dict[str, dict]:
    """The combined bmodel has every piece as a one-stage net with the manifest's inputs, in order,
    and as many outputs: what the C++ engine relies on (tpu-mlir drops unread inputs, renames
    outputs and can reorder nothing else)."""
    nets = net_interfaces(bmodel_info(bmodel, tc))
    expected = [p["name"] for p in m.pieces]
    if sorted(nets) != sorted(expected):
        raise CompileError(f"{bmodel}: nets {sorted(nets)}, the manifest lists {sorted(expected)}")
    for piece in m.pieces:
        net = nets[piece["name"]]
        inputs = [t["name"] for t in piece["inputs"]]
        if net["stages"] != 1 or net["inputs"] != inputs or len(net["outputs"]) != len(piece["outputs"]):
            raise CompileError(f"{bmodel}: net {piece['name']} has {net['stages']} stage(s), inputs {net['inputs']} "
                               f"and {len(net['outputs'])} outputs; the manifest says inputs {inputs} and "
                               f"{len(piece['outputs'])} outputs")
    return nets


def bmodel_info(bmodel: str | Path, toolchain: Toolchain | None = None, timeout: float = 300) -> str:
    """``model_tool --info``: nets, stages, shapes and device memory of a bmodel."""
    import subprocess

    tc = toolchain or ensure_toolchain()
    done = subprocess.run([str(tc.script("model_tool")), "--info", str(bmodel)], env=tc.env(), capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise CompileError(f"model_tool --info {bmodel} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout
