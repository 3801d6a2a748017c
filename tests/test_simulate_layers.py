"""The simulator's engine stays plain numpy: the event engine and the variability model
import nothing of torch and nothing of the code they describe (the schedule reaches them
already priced, through ``simulator.program``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ("simulator/events.py", "simulator/variability.py")
ALLOWED = {"__future__", "dataclasses", "math", "numpy", "simulator.variability"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
    return found


@pytest.mark.parametrize("name", ENGINE)
def test_engine_imports_only_numpy_and_the_standard_library(name):
    imports = _imports(ROOT / name)
    assert imports, name
    assert imports <= ALLOWED, sorted(imports - ALLOWED)
