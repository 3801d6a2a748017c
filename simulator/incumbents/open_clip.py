"""open_clip 3.3's distributed losses (``open_clip/loss.py``) as cost descriptions.

Real code: ``ClipLoss.forward`` → ``get_logits`` → ``gather_features`` (with
``gather_with_grad=True``: ``torch.cat(torch.distributed.nn.all_gather(x))``) and
``F.cross_entropy``; ``SigLipLoss.forward`` → ``_loss`` per block (``get_logits``,
``get_ground_truth``, ``F.logsigmoid``) over ``neighbour_exchange_with_grad`` /
``neighbour_exchange_bidir_with_grad`` (``NeighbourExchange``, ``NeighbourExchangeBidir``:
``batch_isend_irecv``), ``torch.distributed.nn.all_gather`` or ``torch.distributed.nn.all_reduce``.
Everything is plain autograd: every block keeps what its operators save.

With ``b`` rows per rank, ``N = W·b``, feature bytes ``s`` (fp32 here: what was
validated), per rank per step (``·s`` on every ``d``-wide and logit term), without
autocast:

* ``openclip-clip-local`` (``ClipLoss(local_loss=True, gather_with_grad=True)``). Two
  all-gathers with grad (``N×d`` each, kept by the matmuls), ``t·x`` and ``t·y``
  (``b×d``, kept), logits ``t·x·Yᵀ``, ``t·y·Xᵀ`` (``b×N``) and their ``log_softmax``
  (``b×N``, kept), ``int64`` labels. Moments: end of forward ``2Nd + 2bd + 4bN + 8b``;
  backward after the first logit matmul's gradient ``3Nd + 3bd + 2bN + 8b``; the
  all-gather's backward: on gloo (``torch.distributed.nn`` ``_AllGather.backward``) an
  all-to-all into ``W`` fresh ``b×d`` buffers, ``torch.stack`` and ``sum``: ``4Nd + 3bd``
  (both gathered gradients, the partial ``dx, dy``, the buffers and the stack); on NCCL a
  reduce-scatter into one ``b×d``: ``2Nd + 3bd``. Traffic: two all-gathers forward, two
  all-to-alls (gloo) / reduce-scatters (NCCL) backward, ``(W−1)·b·d·s`` each.
* ``openclip-clip-global`` (``local_loss=False``): the ``N×N`` logits on every rank
  (``t·X @ Yᵀ``; ``logits.T`` is a view), ``log_softmax`` of both directions (``N×N``
  each; the transposed one first copies its input), ``t·X`` (``N×d``), labels ``8N``.
  Moments: the second ``log_softmax`` ``3Nd + 4N² + 8N``; backward, after the logit
  matmul's two gradients ``5Nd + N²``; the all-gather's backward ``4Nd + bd`` (gloo) /
  ``2Nd + bd`` (NCCL). Same traffic as clip-local (exact). At large ``N`` the CPU
  ``log_softmax`` of the transposed logits takes scratch beyond its copy (14 KiB at
  ``N ≥ 64``, :data:`LOG_SOFTMAX_SCRATCH_BYTES`) that is a named term.
* ``openclip-siglip-shift`` / ``-bidir``: ``W`` blocks of ``b×b``; every block keeps its
  own ``t·x`` (``b×d``; ``get_logits`` multiplies again), the received texts (``b×d``) and
  three ``b×b`` tensors (``labels``, ``labels·logits``, ``log_sigmoid`` 's buffer, which
  only the CPU kernel fills: CUDA's ``log_sigmoid_forward`` returns an empty one, so two
  per block there; every ``3W`` below is ``2W`` on CUDA, derived from torch's source).
  Moments: in the last forward block ``(2W−1)bd + (3W+2)b²``; first backward block
  ``(2W+1)bd + (3W−2)b²``. Traffic: ``W−1`` exchanges of ``b·d·s`` forward and backward
  (bidir: ``⌊(W−1)/2⌋`` rounds of two tensors plus one single exchange if ``W−1`` is odd).
* ``openclip-siglip-gather``: ``torch.distributed.nn.all_gather`` of the texts, then
  ``W + 1`` blocks (the local one, then every gathered one, the own rank's multiplied by 0
  but computed and kept). Moments: forward ``(2W+1)bd + (3W+5)b²``; the all-gather's
  backward on gloo ``(3W+3)bd + 3b²``. One all-gather forward, one all-to-all (gloo) /
  reduce-scatter (NCCL) backward, ``(W−1)·b·d·s``.
* ``openclip-siglip-reduce``: ``W`` all-reduces of ``b·d·s`` (``text·(rank == i)``) with
  grad, each ``2(W−1)/W·b·d·s`` forward and again backward (exact); blocks and forward
  memory as gather. ``torch.distributed.nn.all_reduce`` clones its input and reduces the
  clone in place (forward and backward alike, on every backend), so no collective
  buffer outlives its block: the backward peaks in the last block's logit matmul
  backward, with every other block's saved tensors still alive, its ``b×b`` logit
  gradient and the two ``b×d`` gradients it forms: ``(2W+3)bd + (3W+1)b²``, the same on
  every rank (allocator peaks on gloo, W = 2..4).

Inside ``torch.autocast`` (``Shape.of(..., autocast="bf16"|"fp16")``: features of ``i``
bytes, autocast dtype of ``h``): autocast casts only the matmuls' operands, so every
collective still moves the caller's ``i`` (traffic as without autocast, at ``s = i``).
Each ``mm`` casts ``t·x`` (freed once cast) and its other operand to ``h`` and saves
the copies; logits come out in ``h``. ``cross_entropy`` is on both CPU's and CUDA's
fp32 lists (an fp32 copy of the logits, an fp32 ``log_softmax`` kept); SigLIP's labels
are in ``i`` and ``labels·logits`` promotes to fp32, so its ``log_sigmoid`` runs in
fp32 on either device. Gradients come back in ``h`` through the matmuls and are cast to
``i``. The moments are in :func:`_clip_local_autocast_memory`,
:func:`_clip_global_autocast_memory` and :func:`_siglip_autocast_memory`.

Validated on gloo (``tests/test_incumbents.py``, fp32): bytes of all six exactly, memory
of all six within 2% (0.15% seen). On CPU bf16 autocast
(``tests/test_incumbents_autocast.py``, oneDNN off: its bf16 matmul takes per-call
scratch that no formula here holds; ``docs/allocator-peak.md`` has what it adds): memory
of all six within 2% (0.15% seen), bytes exactly. On gloo and NCCL the bytes are equal in the ring
convention; the all-gather's backward memory differs (``Shape.device``: "cuda" means
NCCL; the NCCL variant is derived, not measured). Not modelled: gloo's all-gather fills
a flat ``N×d`` buffer that its worker thread may hold well after the call returns on a
busy host (then up to ``+N·d·s`` at the peak; the tests keep the smallest of three runs).
"""

from __future__ import annotations

import numpy as np

from profiling.losses.costs import block_flops, symmetric
from profiling.losses.registry import Method, Phase, Schedule, Shape, peak_of, register

SOURCE = "open_clip 3.3 open_clip/loss.py"
LOG_SOFTMAX_SCRATCH_BYTES = 14_400
"""Scratch of torch 2.13's CPU ``log_softmax`` over a transposed (non-contiguous) input
with rows of 64 or more, one thread, whatever the size (measured with the counting
allocator for ``N`` = 64..1024; none below 64). CUDA: not measured, taken as 0."""


def cpu_scratch(shape: Shape, n):
    """1 where the CPU ``log_softmax`` scratch is taken (rows of 64 or more), else 0."""
    return (shape.device != "cuda") * (n >= 64)


def feature_bytes(shape: Shape) -> int:
    """Bytes per element of the features open_clip sends: the caller's (autocast casts
    only the matmuls' operands, never a collective's)."""
    return shape.elem_bytes if shape.input_bytes is None else shape.input_bytes


def _gathers(shape: Shape, sides: int) -> tuple[Phase, Phase]:
    b, d, w, s = shape.batch, shape.dim, shape.world, feature_bytes(shape)
    nbytes = (w - 1) * b * d * s
    fwd = tuple(symmetric("all_gather", f"gather{i}", nbytes, w - 1) for i in range(sides))
    bwd = tuple(symmetric("reduce_scatter", f"gather{i}.grad", nbytes, w - 1) for i in range(sides))
    return (
        Phase(name="all-gather with grad", pass_="forward", repeat=1, transfers=fwd),
        Phase(name="all-gather backward", pass_="backward", repeat=1, transfers=bwd),
    )


def _clip_schedule(local: bool):
    def schedule(shape: Shape) -> Schedule:
        b, d, n = shape.batch, shape.dim, shape.global_batch
        gather, scatter = _gathers(shape, 2)
        rows = b if local else n
        blocks = 2 if local else 1
        return Schedule(
            (
                gather,
                Phase(
                    name="logits, cross-entropy and gradients",
                    pass_="forward",
                    repeat=1,
                    matmul_flops=blocks * block_flops(rows, n, d),
                    pointwise_elems=2 * rows * n,
                ),
                scatter,
            )
        )

    return schedule


def _clip_local_memory(shape: Shape):
    if shape.input_bytes is not None:
        return _clip_local_autocast_memory(shape)
    b, d, n, s = shape.batch, shape.dim, shape.global_batch, shape.elem_bytes
    gathered = {"gathered features": 2 * n * d * s, "t·x, t·y": 2 * b * d * s}
    gather_backward = (
        {"gathered gradients": 2 * n * d * s, "dx, dy, reduce-scatter output": 3 * b * d * s}
        if shape.device == "cuda"
        else {"gathered gradients": 2 * n * d * s, "dx, dy, sum": 3 * b * d * s}
        | {"all-to-all buffers and stack": 2 * n * d * s}
    )
    return peak_of(
        gathered | {"logits and log-softmax": 4 * b * n * s, "labels": 8 * b},
        gathered
        | {"log-softmax, logit gradient": 2 * b * n * s, "labels": 8 * b}
        | {"one gathered gradient, its dx": n * d * s + b * d * s},
        gather_backward,
    )


def _clip_local_autocast_memory(shape: Shape):
    """Inside ``torch.autocast`` (fp32 features ``i``, autocast dtype ``h``): the
    gathers move ``i``; each ``mm`` casts ``t·x`` and the gathered texts to ``h`` and
    saves those copies (the ``i`` originals die when ``get_logits`` returns), its logits
    come out in ``h``; ``cross_entropy`` (autocast's fp32 list) casts them to fp32 and
    keeps its fp32 ``log_softmax``. Gradients come back to the ``i`` tensors, so the
    all-gather's backward is as without autocast."""
    b, d, n = shape.batch, shape.dim, shape.global_batch
    i, h = shape.input_bytes, shape.elem_bytes
    return peak_of(
        {"h copies of gathered features, t·x, t·y": 2 * n * d * h + 2 * b * d * h}
        | {"h logits": 2 * b * n * h, "fp32 log-softmax, one fp32 cast": 3 * b * n * 4}
        | {"labels": 8 * b},
        {"gathered gradients": 2 * n * d * i, "dx, dy, sum": 3 * b * d * i}
        | {"all-to-all buffers and stack": 2 * n * d * i * (shape.device != "cuda")},
    )


def _clip_global_memory(shape: Shape):
    if shape.input_bytes is not None:
        return _clip_global_autocast_memory(shape)
    b, d, n, s = shape.batch, shape.dim, shape.global_batch, shape.elem_bytes
    gather_backward = {
        "gathered gradients, buffers, stack": (2 if shape.device == "cuda" else 4) * n * d * s
    }
    return peak_of(
        {"gathered features, t·X": 3 * n * d * s, "logits, copy of its transpose": 2 * n * n * s}
        | {"log-softmax (both directions)": 2 * n * n * s, "labels": 8 * n}
        | {"CPU log-softmax scratch": LOG_SOFTMAX_SCRATCH_BYTES * cpu_scratch(shape, n)},
        {"gathered features, t·X, their gradients": 5 * n * d * s, "logit gradient": n * n * s},
        gather_backward | {"sum": b * d * s},
    )


def _clip_global_autocast_memory(shape: Shape):
    """Inside ``torch.autocast`` (features ``i``, autocast dtype ``h``): the gathers move
    ``i``; ``t·X`` (``i``, freed once cast) and ``Y`` are cast to ``h`` and the ``h``
    copies saved by ``mm``, ``X`` kept by the ``t·X`` product; logits ``N×N`` in ``h``,
    alive until ``forward`` returns; ``cross_entropy`` (on CPU's and CUDA's fp32 lists)
    casts each direction to fp32 (the transposed one keeps its strides, so
    ``log_softmax`` copies it once more) and keeps its fp32 ``log_softmax``. Backward:
    the logit gradient comes back in ``h``, the ``mm`` 's gradients in ``h`` are cast to
    ``i``, and the all-gather's backward is as without autocast."""
    b, d, n = shape.batch, shape.dim, shape.global_batch
    i, h = shape.input_bytes, shape.elem_bytes
    nd_i, nd_h = n * d * i, n * d * h
    scratch = LOG_SOFTMAX_SCRATCH_BYTES * cpu_scratch(shape, n)
    return peak_of(
        {"X, h copies of t·X, Y": nd_i + 2 * nd_h, "h logits": n * n * h, "labels": 8 * n}
        | {"fp32 log-softmax (both), cast and copy of the transpose": 4 * n * n * 4}
        | {"CPU log-softmax scratch": scratch},
        {"X, Y, t·X, their h copies": 3 * nd_i + 2 * nd_h, "h logits": n * n * h},
        {"X, h copies, their h gradients": nd_i + 4 * nd_h, "h logit gradient": n * n * h},
        {"X, gradients of X and Y, x·t and its product": 5 * nd_i},
        {"gathered gradients, buffers, stack": (2 if shape.device == "cuda" else 4) * nd_i}
        | {"sum": b * d * i},
    )


def _siglip_schedule(impl: str):
    def schedule(shape: Shape) -> Schedule:
        b, d, w, s = shape.batch, shape.dim, shape.world, feature_bytes(shape)
        nbytes = b * d * s
        blocks = w if impl in ("shift", "bidir") else w + 1
        compute = Phase(
            name="b×b blocks",
            pass_="forward",
            repeat=blocks,
            matmul_flops=block_flops(b, b, d),
            pointwise_elems=b * b,
        )
        if impl == "shift":
            hops = (
                Phase(
                    name=f"exchange texts ({p})",
                    pass_=p,
                    repeat=w - 1,
                    transfers=(symmetric("p2p", f"shift.{p}", nbytes, 1, peer="neighbor"),),
                )
                for p in ("forward", "backward")
            )
            return Schedule((compute, *hops))
        if impl == "bidir":
            rounds, odd = np.divmod(w - 1, 2)
            phases = [compute]
            for p in ("forward", "backward"):
                two = symmetric("p2p", f"bidir.{p}", 2 * nbytes, 2, peer="neighbor", directions=2)
                one = symmetric("p2p", f"bidir.{p}.last", nbytes, 1, peer="neighbor")
                phases += [
                    Phase(name=f"bidir exchange ({p})", pass_=p, repeat=rounds, transfers=(two,)),
                    Phase(name=f"last exchange ({p})", pass_=p, repeat=odd, transfers=(one,)),
                ]
            return Schedule(tuple(phases))
        if impl == "gather":
            gather, scatter = _gathers(shape, 1)
            return Schedule((gather, compute, scatter))
        moved = np.round(2 * (w - 1) * nbytes / w)  # one all-reduce, as a ring RS + AG
        half = np.floor(moved / 2)
        phases = [compute]
        for p in ("forward", "backward"):
            phases.append(
                Phase(
                    name=f"all-reduce texts ({p})",
                    pass_=p,
                    repeat=w,
                    transfers=(
                        symmetric("reduce_scatter", f"reduce.{p}", half, w - 1),
                        symmetric("all_gather", f"reduce.{p}", moved - half, w - 1),
                    ),
                )
            )
        return Schedule(tuple(phases))

    return schedule


def _siglip_memory(impl: str):
    def memory_terms(shape: Shape):
        if shape.input_bytes is not None:
            return _siglip_autocast_memory(impl, shape)
        b, d, w, s = shape.batch, shape.dim, shape.world, shape.elem_bytes
        bd, bb = b * d * s, b * b * s
        per_block = 2 + (shape.device != "cuda")  # log_sigmoid's buffer: CPU only
        if impl in ("shift", "bidir"):
            return peak_of(
                {"t·x and texts per block": (2 * w - 1) * bd}
                | {"b×b per block": (per_block * w + 2) * bb},
                {"t·x, texts, gradients": (2 * w + 1) * bd}
                | {"b×b per block": (per_block * (w - 1) + 1) * bb},
            )
        moments = [
            {"t·x and texts per block": (2 * w + 1) * bd}
            | {"b×b per block": (per_block * (w + 1) + 2) * bb},
        ]
        if impl == "reduce":
            moments.append(
                {"t·x and texts per block, the first dx, dtext": (2 * w + 3) * bd}
                | {"b×b per block but the first, its logit gradient": (per_block * w + 1) * bb}
            )
        elif shape.device != "cuda":
            moments.append(
                {"text gradients, all-to-all buffers": (3 * w + 3) * bd, "b×b per block": 3 * bb}
            )
        return peak_of(*moments)

    return memory_terms


def received_alive(impl: str, w):
    """fp32 texts the forward still references in its last block (not saved: autocast
    saves their ``h`` copies): shift the last two received, bidir the last round's two
    plus the round before it (or the single last exchange), gather all ``W``, reduce
    the last all-reduce's output."""
    w = np.asarray(w)
    if impl == "shift":
        return np.minimum(w - 1, 2)
    if impl == "bidir":
        return np.select([w <= 3, w % 2 == 0], [w - 1, 3], 4)
    if impl == "gather":
        return w * (w > 1)
    return 1 * (w > 1)


def _siglip_autocast_memory(impl: str, shape: Shape):
    """Inside ``torch.autocast`` (features ``i``, autocast dtype ``h``; same on CPU and
    CUDA but for ``log_sigmoid`` 's buffer, CPU only): per block ``t·x`` (``i``, freed
    once cast) and the texts are cast to ``h`` and the copies saved by ``mm`` (so the
    local block keeps a copy of the local texts too); the ``b×b`` logits come out in
    ``h``, labels are in the features' dtype ``i``, ``labels·logits`` and
    ``log_sigmoid`` promote to fp32. The received texts travel in ``i`` and are not
    saved: the forward references the last few (:func:`received_alive`). Backward, per
    block: the logit gradient in ``h``, the two ``mm`` gradients in ``h``, cast to ``i``;
    then ``t·x`` 's backward (``dx·t`` and ``dx·x``). ``nb`` blocks: ``W`` (shift,
    bidir) or ``W + 1`` (gather, reduce)."""
    b, d, w = shape.batch, shape.dim, shape.world
    i, h, z = shape.input_bytes, shape.elem_bytes, 4
    cpu = 1 * (shape.device != "cuda")
    bd_i, bd_h, bb = b * d * i, b * d * h, b * b
    nb = w + (w > 1) * (impl in ("gather", "reduce"))
    kept = {
        "h copies per block": 2 * bd_h,
        "labels, fp32 product, buffer per block": bb * (i + z + z * cpu),
    }
    before = {k: (nb - 1) * v for k, v in kept.items()}
    received = {"received fp32 texts": received_alive(impl, w) * bd_i}
    moments = [
        before
        | received
        | {"last block's h copies": 2 * bd_h, "h logits": bb * h}
        | {"labels, fp32 product, log-sigmoid and buffer": bb * (i + 2 * z + z * cpu)},
        before | received | {"last block's t·x and h copies": bd_i + 2 * bd_h, "h logits": bb * h},
        before | {"last block's h copies, their h gradients": 4 * bd_h, "h logit gradient": bb * h},
        before | {"dx, dtext, dx·t, dx·x": 4 * bd_i},
    ]
    if impl != "shift":
        # the second block backward: its text gradient waits (for the all-gather's or the
        # bidir round's other one; reduce: accumulated), x's accumulates
        waits = (w > 1) if impl != "bidir" else (w >= 3)
        moments.append(
            {k: np.maximum(nb - 2, 0) * v for k, v in kept.items()}
            | {"waiting text gradient, accumulated dx, dx, dtext, dx·t, dx·x": 6 * bd_i * waits}
        )
    if impl == "gather":
        buffers = w + 2 if shape.device == "cuda" else 3 * w + 2
        moments.append(
            kept | {"text gradients, all-to-all buffers, stack, dx, sum": buffers * bd_i * (w > 1)}
        )
    return peak_of(*moments)


def _register(name, kind, summary, describes, schedule, memory_terms, ring=False):
    register(
        Method(
            name=name,
            kind=kind,
            summary=summary,
            describes=f"{SOURCE} {describes}",
            schedule=schedule,
            memory_terms=memory_terms,
            ring=ring,
        )
    )


_register(
    "openclip-clip-local",
    "softmax",
    "open_clip ClipLoss(local_loss=True): b×N logits over all-gathered features",
    "ClipLoss(local_loss=True, gather_with_grad=True)",
    _clip_schedule(local=True),
    _clip_local_memory,
)
_register(
    "openclip-clip-global",
    "softmax",
    "open_clip ClipLoss(local_loss=False): the N×N logits on every rank",
    "ClipLoss(local_loss=False, gather_with_grad=True)",
    _clip_schedule(local=False),
    _clip_global_memory,
)
for _impl, _summary in (
    ("bidir", "SigLIP ring both ways, autograd keeps every block"),
    ("shift", "SigLIP ring one way, autograd keeps every block"),
    ("gather", "SigLIP over all-gathered texts, W+1 blocks kept"),
    ("reduce", "SigLIP, texts broadcast by W all-reduces, W+1 blocks kept"),
):
    _register(
        f"openclip-siglip-{_impl}",
        "sigmoid",
        f"open_clip {_summary}",
        f"SigLipLoss(dist_impl={_impl!r})",
        _siglip_schedule(_impl),
        _siglip_memory(_impl),
        ring=_impl in ("shift", "bidir"),
    )
