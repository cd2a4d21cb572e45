"""How many threads a CPU backend uses, and onnxruntime's process-wide quiet settings.

The server shares the machine with the editor and the user's build, so it uses one thread per
physical core it may run on (hyper-threads share a core's vector units: a second thread on one
buys little for matrix-vector products and costs the editor) and never spins while idle.
"""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (its affinity mask), from sysfs;
    the logical count where the topology is not readable."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            return len(allowed) or 1
    return len(cores) or 1


def quiet_onnxruntime() -> None:
    """Keep onnxruntime from writing a telemetry device id under ``~/.cache/Microsoft/`` (it
    reads ``ORT_DISABLE_TELEMETRY`` when it is imported, so call this first). A value the user
    set wins."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
