"""csrc/_bmrt.pyi, the stub installed beside the module, names what the module has, and no more.

Fast: importing _bmrt needs no Sophgo library and no device.
"""

from __future__ import annotations

import ast
from pathlib import Path

from wizardcoder_tpu import _bmrt

STUB = Path(__file__).resolve().parents[1] / "csrc" / "_bmrt.pyi"


def _stub_names() -> dict[str, list[str]]:
    """Top-level names of the stub, each with the members a class declares."""
    names: dict[str, list[str]] = {}
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names[node.name] = []
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = []
        elif isinstance(node, ast.ClassDef):
            names[node.name] = [n.name for n in node.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"]
    return names


def test_every_name_in_the_stub_is_in_the_module_and_the_reverse():
    stub = _stub_names()
    for name, members in stub.items():
        assert hasattr(_bmrt, name), f"the stub declares {name}, the module has none"
        for member in members:
            assert hasattr(getattr(_bmrt, name), member), f"the stub declares {name}.{member}, the module has none"
    public = {n for n in dir(_bmrt) if not n.startswith("_")}
    assert public == set(stub), f"in the module, not the stub: {public - set(stub)}"
