"""The console every ``sigsim`` verb prints to, and its table conventions.

One rich console (wide enough when piped that no number is cut short), one rule for
columns (names whole, numbers right-aligned) and the comma-separated integer lists the
verbs take, so that every verb's tables look alike.
"""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:
    # Piped or captured output: wide enough that no number is cut short.
    console = Console(width=200)
MiB = 2**20


def column(table: Table, header: str) -> None:
    """Names stay whole (never cut to "softmax-al…"); numbers right-aligned."""
    if header in ("method", "quantity", "regime"):
        table.add_column(header, no_wrap=True)
    else:
        table.add_column(header, justify="right")


def ints(text: str) -> list[int]:
    """``"1,8,64"`` → ``[1, 8, 64]``."""
    return [int(part) for part in str(text).split(",") if part.strip()]


@contextlib.contextmanager
def stdout_to_stderr(active: bool):
    """While active, everything meant for stdout goes to stderr: Python's ``sys.stdout``
    (the console, ``print``) and file descriptor 1 (worker processes inherit it), so that
    under ``--json`` stdout carries only the JSON printed after the block."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
