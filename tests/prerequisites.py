"""Test helper for tests that need the machine's privileges or packages (network
namespaces, Slurm): a missing prerequisite skips the test with its reason, except in CI
(``CI=true``), where these tests must execute and a missing prerequisite fails them."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(ok: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) with ``reason`` unless ``ok``."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"CI=true and a prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_root_and(*programs: str) -> None:
    """Root, and every program in ``programs`` on PATH."""
    require(os.geteuid() == 0, "needs root (network namespaces, daemons)")
    missing = [p for p in programs if shutil.which(p) is None]
    require(not missing, f"not on PATH: {', '.join(missing)}")
