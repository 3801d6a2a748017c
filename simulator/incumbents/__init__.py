"""Cost descriptions of the distributed contrastive losses people run today (incumbents).

Each module here registers :class:`~profiling.losses.registry.Method` s with no loss
module (``loss=None``) and a ``describes`` field naming the real code, so that
``simulator.predict``, ``sigsim predict`` / ``maxbatch`` / ``recommend`` price them by
name like our methods, while ``profiling.losses.METHODS`` (what the profiler and the
tests run) keeps listing only ours. They live under ``simulator`` rather than beside
our losses because nothing here runs: they are descriptions of someone else's code.

* ``open_clip``: open_clip 3.3 ``ClipLoss`` and ``SigLipLoss`` (validated on gloo here);
* ``inf_cl``: Inf-CL 1.2.1 ``cal_ring_loss`` / ``cal_inf_loss``.
"""

from __future__ import annotations

from profiling.losses.registry import incumbents
from simulator.incumbents import inf_cl, open_clip  # noqa: F401  (registers)

INCUMBENTS: tuple[str, ...] = incumbents()
"""Every registered incumbent, in table order."""
