"""Count the traffic of code that calls ``torch.distributed`` directly (open_clip's losses).

Our losses send everything through ``profiling.comm``, which counts it. A peer library
does not, so :func:`count_traffic` temporarily wraps the ``torch.distributed`` functions
such code reaches by attribute lookup at call time (``torch.distributed.batch_isend_irecv``,
``all_gather``, ``all_reduce``, ``reduce_scatter``, ``scatter``, ``all_to_all``, and the
tensor forms ``all_gather_into_tensor`` / ``reduce_scatter_tensor``). The autograd
collectives of ``torch.distributed.nn`` call these same functions in their forward *and*
backward, so both passes are counted. ``isend`` / ``irecv`` themselves are not wrapped
(``P2POp`` checks their identity); sends and receives are counted from the ``P2POp`` list
given to ``batch_isend_irecv``.

Byte convention: the ring convention of ``profiling.comm``, per rank, so that the two
sides of a comparison are counted alike:

* all-gather of ``n`` bytes per rank: sent = received = ``(W-1)·n``, ``W-1`` messages;
* reduce-scatter producing ``n`` bytes per rank: sent = received = ``(W-1)·n``;
* all-reduce of ``n`` bytes: sent = received = ``2(W-1)/W·n`` (``profiling.traffic``'s);
* scatter of ``n`` bytes per rank: the root sends ``(W-1)·n``, every other rank
  receives ``n`` (what a direct scatter moves; gloo's all-to-all, which
  ``torch.distributed.nn``'s all-gather backward uses on gloo, is ``W`` scatters);
* all-to-all of ``n`` bytes per destination: sent = received = ``(W-1)·n``;
* point-to-point: the bytes of the tensors themselves, one message per send.

Keys are ``"<op>:torch.distributed"`` so a :class:`profiling.comm.CommRecord` holds them
beside our own ``"<op>:<label>"`` keys.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.distributed as dist

from profiling.comm import CommRecord

LABEL = "torch.distributed"


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _world(kwargs) -> int:
    return dist.get_world_size(kwargs.get("group"))


def _rank(kwargs) -> int:
    return dist.get_rank(kwargs.get("group"))


def _arg(args, kwargs, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


def _charge_all_gather(rec: CommRecord, args, kwargs) -> None:
    # all_gather(tensor_list, tensor, group=None)
    n = _nbytes(_arg(args, kwargs, 1, "tensor"))
    w = _world(kwargs)
    rec.add(
        f"all_gather:{LABEL}", messages=w - 1, sent=(w - 1) * n, received=(w - 1) * n, exposed_s=0
    )


def _charge_all_gather_tensor(rec: CommRecord, args, kwargs) -> None:
    n = _nbytes(_arg(args, kwargs, 1, "input_tensor"))
    w = _world(kwargs)
    rec.add(
        f"all_gather:{LABEL}", messages=w - 1, sent=(w - 1) * n, received=(w - 1) * n, exposed_s=0
    )


def _charge_reduce_scatter(rec: CommRecord, args, kwargs) -> None:
    # reduce_scatter(output, input_list) and reduce_scatter_tensor(output, input)
    n = _nbytes(_arg(args, kwargs, 0, "output"))
    w = _world(kwargs)
    rec.add(
        f"reduce_scatter:{LABEL}",
        messages=w - 1,
        sent=(w - 1) * n,
        received=(w - 1) * n,
        exposed_s=0,
    )


def _charge_all_reduce(rec: CommRecord, args, kwargs) -> None:
    n = _nbytes(_arg(args, kwargs, 0, "tensor"))
    w = _world(kwargs)
    moved = round(2 * (w - 1) / w * n)
    rec.add(f"all_reduce:{LABEL}", messages=2 * (w - 1), sent=moved, received=moved, exposed_s=0)


def _charge_scatter(rec: CommRecord, args, kwargs) -> None:
    # scatter(tensor, scatter_list=None, src=None, group=None, ...)
    n = _nbytes(_arg(args, kwargs, 0, "tensor"))
    w = _world(kwargs)
    src = _arg(args, kwargs, 2, "src")
    if src is None:
        src = (
            dist.get_global_rank(kwargs["group"], kwargs["group_src"])
            if "group_src" in kwargs
            else 0
        )
    root = dist.get_rank() == src
    sent, received = ((w - 1) * n, 0) if root else (0, n)
    rec.add(
        f"scatter:{LABEL}", messages=w - 1 if root else 0, sent=sent, received=received, exposed_s=0
    )


def _charge_all_to_all(rec: CommRecord, args, kwargs) -> None:
    # all_to_all(output_tensor_list, input_tensor_list)
    inputs = _arg(args, kwargs, 1, "input_tensor_list")
    me = _rank(kwargs)
    moved = sum(_nbytes(t) for i, t in enumerate(inputs) if i != me)
    w = _world(kwargs)
    rec.add(f"all_to_all:{LABEL}", messages=w - 1, sent=moved, received=moved, exposed_s=0)


def _charge_p2p(rec: CommRecord, args, kwargs) -> None:
    ops = _arg(args, kwargs, 0, "p2p_op_list")
    sends = [op.tensor for op in ops if op.op is dist.isend]
    recvs = [op.tensor for op in ops if op.op is dist.irecv]
    rec.add(
        f"p2p:{LABEL}",
        messages=len(sends),
        sent=sum(_nbytes(t) for t in sends),
        received=sum(_nbytes(t) for t in recvs),
        exposed_s=0,
    )


_CHARGES = {
    "all_gather": _charge_all_gather,
    "all_gather_into_tensor": _charge_all_gather_tensor,
    "reduce_scatter": _charge_reduce_scatter,
    "reduce_scatter_tensor": _charge_reduce_scatter,
    "all_reduce": _charge_all_reduce,
    "scatter": _charge_scatter,
    "all_to_all": _charge_all_to_all,
    "batch_isend_irecv": _charge_p2p,
}


def _wrap(original, charge, rec: CommRecord):
    @functools.wraps(original)
    def counted(*args, **kwargs):
        charge(rec, args, kwargs)
        return original(*args, **kwargs)

    return counted


@contextlib.contextmanager
def count_traffic() -> Iterator[CommRecord]:
    """Count, in a fresh :class:`CommRecord`, what ``torch.distributed`` moves in the block.

    Process-wide while active (it replaces module attributes): run nothing else that
    communicates meanwhile.
    """
    rec = CommRecord()
    originals = {name: getattr(dist, name) for name in _CHARGES if hasattr(dist, name)}
    try:
        for name, original in originals.items():
            setattr(dist, name, _wrap(original, _CHARGES[name], rec))
        yield rec
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)
