"""``sigmoid-ring-bidir``: the sigmoid ring with rounds split between both directions.

Same math, same one-trip backward and the same per-block work as ``sigmoid-ring``
(read its docstring first). Texts travel both ways at once: ``R = ⌈(W−1)/2⌉`` rounds to
``r+1`` and ``L = ⌊(W−1)/2⌋`` rounds to ``r−1``, ``R + L = W−1`` blocks in all, correct for
odd and even W. Each round moves two payloads over the two directions of each link,
so about half as many sequential rounds as the one-way ring. Each chain's accumulator
follows its texts and, after their last stop, goes straight home (``R`` or ``L`` ranks
away; on a switch such as NVSwitch that is one hop like any other).

Traffic per rank per step is the one-way ring's: ``(W−1)·b·d·(s + c)`` sent and received,
``2(W−1)`` messages, plus the backward's all-gather of upstream scalars and the
cross-rank check; its backward (fast path and exact second trip, on both chains) is the
one-way ring's too.

Peak memory per rank: the one-way ring's terms with two chains in flight (four payload
buffers, four accumulator-sized buffers, six with ``hide_accumulator``, the default on
CUDA: ``ring``), still independent of W.

The cost description of this code (its ``Schedule`` and memory terms, the formulas
above in numpy) and its registration are in the sibling ``sigmoid_ring_bidir_cost``.
"""

from __future__ import annotations

from profiling.losses import ring
from profiling.losses.sigmoid_ring import SigmoidRingLoss


class SigmoidRingBidirLoss(SigmoidRingLoss):
    """SigLIP loss by a ring of texts moving both ways (``chains=ring.both_ways``)."""

    chains = staticmethod(ring.both_ways)
