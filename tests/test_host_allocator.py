"""profiling.host_allocator: a rank reuses freed host memory instead of faulting it in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt thresholds are glibc's",
)

# A step-like loop: two 8 MiB tensors made, written and freed, 40 times. Prints the minor
# page faults of the last 20 iterations (the heap settles within the first ten). 8 MiB
# is 2,048 pages: a process that gives the blocks back to the kernel faults about 4,096
# times per iteration.
_LOOP = """
import resource, sys, torch
from profiling.host_allocator import keep_freed_memory
if sys.argv[1] == "keep":
    print(keep_freed_memory())
faults = []
for i in range(40):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.ones(2 * 2**20)
    b = a * 2.0
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[20:]))
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return out[0], int(out[-2])


def test_freed_blocks_are_reused_without_page_faults():
    said, faults = _faults("keep")
    assert said.startswith("glibc mallopt: mmap threshold 32 MiB")
    # Without reuse: about 82,000. The heap may still grow once or twice (2,048 each).
    assert faults < 8192, f"{faults} minor faults in 20 iterations"


def test_description_is_stable_across_calls():
    from profiling.host_allocator import keep_freed_memory

    assert keep_freed_memory() == keep_freed_memory()
