"""Every method's cost description, registered in table order, without torch.

Importing this module imports each strategy's numpy-only ``<name>_cost`` sibling, which
registers its :class:`~profiling.losses.registry.Method`; the order of registration is
the order in tables (``sigmoid_ring_bidir_cost`` imports ``sigmoid_ring_cost``, so the
one-way ring comes first; ``tests/test_import_layers.py`` pins the order). The runnable loss classes stay unimported until :func:`build_loss` asks for one.
"""

from __future__ import annotations

from profiling.losses import (  # noqa: F401  (importing registers)
    sigmoid_allgather_cost,
    sigmoid_ring_bidir_cost,
    sigmoid_ring_cost,
    softmax_allgather_cost,
    softmax_ring_cost,
)
from profiling.losses.registry import get_method, registered

METHODS: tuple[str, ...] = registered()
"""Our runnable methods, in table order."""


def build_loss(method: str, *, group=None, **options):
    """The loss module (a ``torch.nn.Module``) of a registered method, with options
    checked against its own; imports the method's torch module.

    ``group``: the process group (or 1-D ``DeviceMesh``) the loss spans; None: the
    default group.
    """
    spec = get_method(method)
    if not spec.runnable:
        raise ValueError(f"{method!r} is a cost description of {spec.describes}, not a loss to run")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise ValueError(f"method {method!r} has no option {unknown[0]!r}; allowed: {allowed}")
    return spec.module(group=group, **options)
