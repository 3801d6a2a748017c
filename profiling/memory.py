"""Peak memory of one step, two ways: live tensors and the allocator.

:class:`AllocatorTracker` is the ground truth: the peak of bytes the allocator holds
during the step, above its level at the start, every allocation counted (operator
scratch included). :class:`LiveTensorTracker` is the second view: bytes of tensors the
step's Python-visible operators create, which names what holds the memory.

:class:`LiveTensorTracker` is a ``TorchDispatchMode``: every tensor produced by an
operator while it is active is attributed to its storage, and a weak-reference
finaliser on the storage subtracts its bytes when the storage is freed. PyTorch keeps a
storage's Python object alive exactly as long as the storage itself (including
references held only by autograd, e.g. saved tensors and in-flight communication
buffers), so the running total is the bytes held by tensors created since the tracker
started. Tensors that existed before (the loss inputs) are not counted; their gradients,
created during backward, are.

The live peak counts tensor storage only: not scratch an operator allocates and frees
inside itself, nor allocator rounding, the CUDA context or NCCL buffers. The cost
model's peak memory is validated against the allocator peak (``profiling.measure``
records both, and NVML and RSS beside them).

The mode is thread-local: it sees the operators of the thread that entered it, and of
autograd's backward on CPU (which runs in that thread). Use it around the forward and
the backward together.
"""

from __future__ import annotations

import os
import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from profiling import cpu_allocator


class LiveTensorTracker(TorchDispatchMode):
    """Track bytes of live tensor storage created while active; ``peak_bytes`` is the max."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self._lock = threading.Lock()
        self.current_bytes = 0
        self.peak_bytes = 0

    def reset_peak(self) -> None:
        """Restart the peak from what is live now."""
        with self._lock:
            self.peak_bytes = self.current_bytes

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        with self._lock:
            if key in self._live:
                return
            nbytes = storage.nbytes()
            self._live[key] = nbytes
            self.current_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        with self._lock:
            nbytes = self._live.pop(key, None)
            if nbytes is not None:
                self.current_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # Outputs that alias an argument (views, in-place and out= ops) hold no new
        # storage: counted already if the argument was created under the tracker, and
        # not ours to count if it existed before.
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor) and id(item.untyped_storage()) not in inputs:
                self._track(item)
        return out


class AllocatorTracker:
    """Peak bytes held by the allocator during a ``with`` block, above the level at entry.

    Every allocation the allocator serves is counted, operator scratch included (what
    :class:`LiveTensorTracker` cannot see). After the block:

    * ``peak_bytes``: ``max_t (allocated(t) − allocated(entry))``, never below 0;
    * ``peak_reserved_bytes``: CUDA only, the caching allocator's largest reservation
      during the block (absolute: blocks it already held count), else None.

    CUDA: ``torch.cuda.reset_peak_memory_stats`` at entry, then ``max_memory_allocated``
    and ``max_memory_reserved`` (device synchronised at both ends). CPU: the counting
    allocator of ``profiling.cpu_allocator`` (bytes as requested, every thread, exact).
    Both count every thread's allocations in the process, so they need the device to
    themselves: with ``own_device`` False (ranks run as threads) both stay None, as they
    do on CPU with ``SIGSIM_CPU_ALLOCATOR=0`` (a machine that cannot build the counter).
    """

    def __init__(self, device: torch.device | str = "cpu", *, own_device: bool = True) -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"AllocatorTracker: no allocator view for device {self.device}")
        if self.device.type == "cpu" and os.environ.get("SIGSIM_CPU_ALLOCATOR") == "0":
            own_device = False  # no compiler for the counter: records carry no allocator peak
        self.own_device = own_device
        self.peak_bytes: int | None = None
        self.peak_reserved_bytes: int | None = None
        self._base_bytes = 0
        self._counter = cpu_allocator.counter() if self._cpu else None

    @property
    def _cpu(self) -> bool:
        return self.own_device and self.device.type == "cpu"

    def __enter__(self) -> AllocatorTracker:
        if not self.own_device:
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self._base_bytes = self._counter.reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        if not self.own_device:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_reserved_bytes = int(torch.cuda.max_memory_reserved(self.device))
        else:
            peak = self._counter.peak_bytes()
        self.peak_bytes = max(int(peak) - self._base_bytes, 0)
