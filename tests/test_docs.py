"""The docs stay in step with the registry: every method is documented where users look.

Each registered method appears in the README's methods table, and its strategy module
opens with a docstring that states its traffic and its peak memory.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from profiling.losses import METHODS, get_method

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("method", METHODS)
def test_method_in_readme(method):
    assert f"| `{method}` |" in README


@pytest.mark.parametrize("method", METHODS)
def test_module_docstring_states_traffic_and_memory(method):
    doc = inspect.getmodule(get_method(method).module).__doc__ or ""
    assert doc.startswith(f"``{method}``"), doc[:80]
    assert "Traffic" in doc or "Communication" in doc
    assert "memory" in doc.lower()
