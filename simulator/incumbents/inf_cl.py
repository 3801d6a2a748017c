"""Inf-CL 1.2.1's rings (pip ``inf-cl``, ``inf_cl/ring.py``) as cost descriptions.

Real code: ``cal_ring_loss(q, k, scale=t)`` → ``_cal_ring_loss`` → ``RingProb.apply``
and ``cal_inf_loss`` → ``_cal_inf_loss`` → ``InfProb.apply``. One call is one direction
of the CLIP loss (the log-sum-exp of each row of ``q`` against every ``k``, minus the
positive), so the symmetric loss described here is two calls,
``(cal_ring_loss(x, y) + cal_ring_loss(y, x)) / 2``.

Per call, with ``b`` rows per rank, width ``d``, ``W`` ranks (``q`` and ``k`` are made
fp32 by ``.float()``, so everything below is 4 bytes per element whatever the input):

* forward (``RingProb.forward``): ``W`` steps over a ``RingComm`` ring
  (``batch_isend_irecv``: send ``k`` to the next rank, receive the previous one's, ``b·d·4``
  bytes, ``W − 1`` times); per step one ``b×b`` block ``q·kᵀ`` and ``log(Σ exp)``; a
  running log-sum-exp (``b``). Saves ``q`` (``t·q``, ``b×d``), the last ``k`` it
  received and the log-sum-exp;
* backward (``RingProb.backward``): ``W`` steps again, the same ``k`` ring (``W − 1``
  sends) plus a second ring carrying the partial ``dk`` (``b×d`` fp32, sent at *every*
  step, ``W`` sends, so ``dk`` ends at its owner); per step the block is recomputed and
  ``dq``, ``dk`` formed by two matmuls;
* ``GradientGather`` (the scale) all-reduces its 4-byte gradient.

Per rank per step of the symmetric loss (two calls)::

    sent = received = 2·(3W − 2)·b·d·4  (p2p)  +  2·round(2(W−1)/W·4)  (all-reduce)
    matmul FLOPs    = 2·W·(2 + 6)·b²·d

``infcl-inf`` (``InfProb``) runs the same rings with Triton kernels
(``inf_cl/flash.py`` ``_flash_prob_forward`` / ``_flash_prob_backward``) inside each
block, which tile the ``b×b`` block and never hold it: its traffic and FLOPs are those of
``infcl-ring``; its memory drops the ``b×b`` terms. **It is derived from the code, not
measured**: it needs CUDA (Triton), and no GPU was at hand.

Memory (``infcl-ring``), two moments of the backward of the call autograd runs first:
the other call's saved ``t·q``, ``k``, ``k[labels]`` and this call's (and the numerator's
gradients), ``dq``, ``dk``, the block's ``dq``, ``dk`` and the ring buffers (``k`` and ``dk``
received), ``b×d`` each; and either the ``b×b`` block with its gradient (at
``dk = block_dk + next_dk``: ``(12 + [W≥3])·bd + 2b²``) or, while the block is formed,
the block, its exponent, its gradient and the transposed copy the second einsum makes
(``(9 + 2·[W≥3] + [W≥4])·bd + 4b²``); plus five fp32 row vectors. How many ring
buffers are alive at once grows with ``W`` until ``W = 4`` and then stays (read from
allocator traces at W = 2..6). Within 1% of the allocator on gloo
(``tests/test_incumbents.py``; W = 5, 6 checked once by hand); the traffic is exact.
``infcl-inf`` keeps the same ``b×d`` terms and drops the ``b²`` ones.

Inside ``torch.autocast`` (dtype ``h``; ``Shape.of(..., autocast=...)``): the rings still
move the fp32 ``k`` and ``dk`` (``.float()`` comes first; traffic unchanged). The
forward's einsums (on CPU's and CUDA's lower-precision lists) give ``h`` blocks; ``exp``,
``sum`` and ``log`` are on CUDA's fp32 list, not on CPU's, so on CPU the log-sum-exps come
out in ``h`` (three of the five row vectors: ``(5·4 − 3(4 − h))·b`` there). The numerator
einsum saves ``h`` copies of ``t·q`` and ``k[labels]`` (``2·b·d·h``, the ``b·d·4`` its fp32
``k[labels]`` took without autocast, for ``h`` = 2). ``RingProb.backward`` runs outside
autocast (``backward()`` is called after the ``with`` block), so it is the fp32 one: the
peak, which is in that backward, keeps its ``b×d`` and ``b×b`` terms. Validated on CPU
bf16 autocast within 1% (``tests/test_incumbents_autocast.py``, oneDNN off); ``infcl-inf``
under autocast is derived the same way (its Triton kernels take the fp32 ``q``, ``k``).
"""

from __future__ import annotations

import numpy as np

from profiling.losses.costs import symmetric
from profiling.losses.registry import Method, Phase, Schedule, Shape, peak_of, register

SOURCE = "inf-cl 1.2.1 inf_cl/ring.py"
FP32 = 4


def _schedule(shape: Shape) -> Schedule:
    b, d, w = shape.batch, shape.dim, shape.world
    nbytes = b * d * FP32

    scale = np.round(2 * (w - 1) * FP32 / w)
    half = np.floor(scale / 2)
    return Schedule(
        (
            Phase(
                name="forward ring step",
                pass_="forward",
                repeat=2 * w,
                matmul_flops=2 * b * b * d,
                pointwise_elems=b * b,
            ),
            Phase(
                name="forward k exchange",
                pass_="forward",
                repeat=2 * (w - 1),
                transfers=(symmetric("p2p", "ring.k", nbytes, 1),),
                overlapped=True,
            ),
            Phase(
                name="backward ring step",
                pass_="backward",
                repeat=2 * w,
                matmul_flops=6 * b * b * d,
                pointwise_elems=2 * b * b,
                transfers=(symmetric("p2p", "ring.dk", nbytes, 1),),
            ),
            Phase(
                name="backward k exchange",
                pass_="backward",
                repeat=2 * (w - 1),
                transfers=(symmetric("p2p", "ring.k.backward", nbytes, 1),),
                overlapped=True,
            ),
            Phase(
                name="scale gradient all-reduce",
                pass_="backward",
                repeat=2,
                transfers=(
                    symmetric("reduce_scatter", "scale", half, w - 1),
                    symmetric("all_gather", "scale", scale - half, w - 1),
                ),
            ),
        )
    )


def _memory(blocks: bool):
    def memory_terms(shape: Shape):
        b, d, w, h = shape.batch, shape.dim, shape.world, shape.elem_bytes
        bd, bb = b * d * FP32, b * b * FP32
        late = 1 * (w >= 3)  # from the third rank on, a k and a dk are in flight at once
        full = 1 * (w >= 4)
        # CPU autocast: exp, sum and log run in h, so the log-sum-exps come out in h
        half_rows = 3 * (shape.input_bytes is not None) * (shape.device != "cuda")
        rows = {"row vectors (log-sum-exps, numerators)": (5 * FP32 - half_rows * (4 - h)) * b}
        return peak_of(
            {"saved, numerator gradients, dq, dk, ring buffers": (12 + late) * bd}
            | {"block and its gradient": 2 * bb * blocks}
            | rows,
            {"saved, numerator gradients, ring buffers": (9 + 2 * late + full) * bd}
            | {"block, exponent, gradient, transposed copy": 4 * bb * blocks}
            | rows,
        )

    return memory_terms


for _name, _call, _blocks in (
    ("infcl-ring", "cal_ring_loss (RingProb), two calls", True),
    ("infcl-inf", "cal_inf_loss (InfProb, Triton tiles), two calls; derived, not measured", False),
):
    register(
        Method(
            name=_name,
            kind="softmax",
            summary=f"Inf-CL {_call}",
            describes=f"{SOURCE} {_call}",
            schedule=_schedule,
            memory_terms=_memory(_blocks),
            ring=True,
        )
    )
