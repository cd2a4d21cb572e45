"""The risky first steps of the TPU backend, run in a child process.

bmlib does not always return errors: the cmodel build calls ``exit()`` when it cannot start its
simulator (and asserts on a device id past its count), and bmrt dereferences missing fields of a
damaged bmodel and segfaults. Either would take the language server down with it. So before the
backend opens the device in its own process, a child opens it (and, once per bmodel file, loads
the whole bmodel); a child that dies becomes a Python exception in the parent.

Run as ``python -m wizardcoder_tpu.inference.backends.tpu_probe --lib-dir D --devices 0 [--bmodel F]``.
The child prints one ``PROBE_MARK`` line per finished step and one with the error it caught, so
the parent knows how far it got when it dies without a word. The runtime's own prints go to
stderr (``native_stdout``), so stdout carries the marks alone.
"""

from __future__ import annotations

import argparse
import json
import sys

PROBE_MARK = "wizardcoder-tpu-probe:"
STEP_DEVICES = "devices"  # every device opened and freed
STEP_LOADED = "loaded"  # the bmodel loaded and its nets checked


def say(**fields: object) -> None:
    print(PROBE_MARK + json.dumps(fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tpu_probe")
    parser.add_argument("--lib-dir", required=True)
    parser.add_argument("--devices", required=True, help="comma-separated device ids")
    parser.add_argument("--bmodel", help="also load this bmodel fully")
    args = parser.parse_args(argv)
    from wizardcoder_tpu import _bmrt  # no libsophon needed to import it
    from wizardcoder_tpu.inference.native_stdout import protect_stdout

    protect_stdout()  # the marks alone on stdout; the runtime's banner goes to stderr with the rest

    devices = [int(d) for d in args.devices.split(",") if d]
    try:
        _bmrt.load_libraries([args.lib_dir])
        _bmrt.check_devices(devices)
        say(step=STEP_DEVICES)
        if args.bmodel:
            engine = _bmrt.Engine(args.bmodel, devices)
            engine.close()
            say(step=STEP_LOADED)
    except _bmrt.Error as exc:
        say(error=type(exc).__name__, message=str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
