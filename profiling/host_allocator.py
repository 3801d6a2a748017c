"""Keep freed host memory in the process, so a CPU step's time does not depend on malloc's mood.

PyTorch's CPU tensors come from plain ``malloc`` (``posix_memalign``). glibc returns
large freed blocks to the kernel, either because they were ``mmap``-ed (above the mmap
threshold) or because the free space at the top of the heap passed the trim threshold;
the next step's tensors of the same size then fault in fresh zeroed pages. Both
thresholds move at run time with the history of allocations, so whether a process pays
that cost is decided by chance, per process, and stays decided: a gloo rank in the slow
state runs slower than its peer, and the slowest rank sets the step (what it cost on the
development VM: ``docs/cost-model.md``).

:func:`keep_freed_memory` fixes both thresholds (``mallopt``), which also turns glibc's
adjustment off: blocks up to :data:`MMAP_THRESHOLD_BYTES` come from the heap, and freed
heap memory stays in the process (up to :data:`TRIM_THRESHOLD_BYTES` free at the top),
as a GPU's caching allocator keeps its blocks. Larger blocks are still ``mmap``-ed and
fault in every step, the same way every time. Every rank of ``profiling.launch`` calls
it, and so does calibration. It changes time only: the live-tensor peak that sigsim
reports counts tensors, not heap. The process's resident set stays at its peak instead
of shrinking after it. A no-op (returning None) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters, from glibc's ``malloc.h``."""

MMAP_THRESHOLD_BYTES = 32 * 2**20
"""glibc's largest accepted mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``)."""

TRIM_THRESHOLD_BYTES = 2**31 - 1
"""Free bytes at the heap's top before glibc gives them back (``mallopt`` takes an int)."""


@functools.cache
def keep_freed_memory() -> str | None:
    """Fix glibc's mmap and trim thresholds in this process; says what it set, or None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    ):
        raise RuntimeError("glibc refused mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD)")
    return (
        f"glibc mallopt: mmap threshold {MMAP_THRESHOLD_BYTES // 2**20} MiB, "
        f"trim threshold {TRIM_THRESHOLD_BYTES / 2**30:.0f} GiB (profiling.host_allocator)"
    )
