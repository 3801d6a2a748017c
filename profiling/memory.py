"""Live-tensor memory tracking that works on any device, CPU included.

:class:`LiveTensorTracker` is a ``TorchDispatchMode``: every tensor produced by an
operator while it is active is attributed to its storage, and a weak-reference
finaliser on the storage subtracts its bytes when the storage is freed. PyTorch keeps a
storage's Python object alive exactly as long as the storage itself (including
references held only by autograd, e.g. saved tensors and in-flight communication
buffers), so the running total is the bytes held by tensors created since the tracker
started. Tensors that existed before (the loss inputs) are not counted; their gradients,
created during backward, are.

This is the definition the cost model's peak memory uses: the peak, during one forward
and backward of the loss, of bytes held by tensors created in that step. It counts
tensor storage only, not allocator rounding, the CUDA context or NCCL buffers (see
``profiling.measure`` for the allocator, NVML and RSS views).

The mode is thread-local: it sees the operators of the thread that entered it, and of
autograd's backward on CPU (which runs in that thread). Use it around the forward and
the backward together.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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
