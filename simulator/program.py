"""A method's step as the event engine runs it, priced by the closed form's own functions.

:func:`build` reads the method's :class:`~profiling.losses.registry.Schedule` and turns
it into engine segments (:mod:`simulator.events`):

* consecutive phases whose transfers are ``p2p`` ``<pass>.payload`` (and
  ``<pass>.acc``) form one ring pass (``profiling.losses.ring.ring_pass``); the phase
  just after them that computes and moves nothing is its own (home) block; each phase's
  ``directions`` is the number of chains active in its rounds; whether an accumulator
  is waited for before or after its block is the shape's ``hide_accumulator``;
* every other phase computes, then runs its collectives one after the other.

Every duration is the closed form's (``simulator.model._times``, the function behind
:func:`simulator.predict`), evaluated on one repetition of one phase: a phase's compute
is its ``compute_s`` less the step's fixed cost, a transfer's time its ``comm_s`` with the
levels' ``sync_s`` set to 0, and its sync the difference. Transfers are priced on both
network levels (the closed form prices a whole ring on the inter-node level once it
spans nodes; the engine prices each hop on its own). Compute is divided by the closed
form's core share ``f``, the engine's processor sharing puts it back where ranks
actually compete. Where moving bytes needs the cores and the ranks occupy all of them,
the closed form does not overlap; the engine has each rank move its bytes itself
(``Machine.moves_on_cores``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from profiling.losses.registry import Method, Phase, Schedule, Shape, Transfer
from simulator.events import Collective, Compute, Machine, Priced, RingPass, RingRounds, Segment
from simulator.hardware import Hardware
from simulator.model import _compute_dtype, _counts, _grid, _times, shape_for


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Program:
    """What :func:`build` returns: the segments of one rank's step, and where it runs."""

    segments: tuple[Segment, ...]
    machine: Machine


def _without_sync(hw: Hardware) -> Hardware:
    levels = {
        name: dataclasses.replace(level, sync_s=0.0)
        for name in ("intra_node", "inter_node")
        if (level := getattr(hw, name)) is not None
    }
    return dataclasses.replace(hw, **levels)


class _Pricer:
    """One repetition of a phase or a transfer, through the closed form's ``_times``."""

    def __init__(
        self, shape: Shape, hw: Hardware, compute_dtype: str, world: np.ndarray, kind: str
    ):
        self.shape, self.hw, self.cdt, self.world = shape, hw, compute_dtype, world
        self.kind = kind
        base = self._times((), hw)
        self.step_s = float(base["compute_s"])
        self.core_share = float(base["core_share"])
        inter = hw.inter_node or hw.intra_node
        self.levels = {
            "intra": dataclasses.replace(hw, inter_node=hw.intra_node),
            "inter": dataclasses.replace(hw, intra_node=inter, inter_node=inter),
        }

    def _times(self, phases, hw) -> dict:
        return _times(Schedule(tuple(phases)), self.shape, hw, self.cdt, self.world, self.kind)

    def compute_s(self, phase: Phase) -> float:
        one = dataclasses.replace(phase, repeat=1)
        return float(self._times((one,), self.hw)["compute_s"]) - self.step_s

    def transfer(self, phase: Phase, transfer: Transfer) -> Priced:
        alone = Phase(name=phase.name, pass_=phase.pass_, repeat=1, transfers=(transfer,))
        out = {}
        for level, hw in self.levels.items():
            with_sync = float(self._times((alone,), hw)["comm_s"])
            moving = float(self._times((alone,), _without_sync(hw))["comm_s"])
            out[f"{level}_s"], out[f"{level}_sync_s"] = moving, with_sync - moving
        return Priced(label=transfer.key, **out)


def _ring_label(phase: Phase) -> str | None:
    """``sigmoid`` for a ring round phase (p2p ``sigmoid.payload`` [+ ``sigmoid.acc``])."""
    keys = [t for t in phase.transfers if t.op == "p2p"]
    if not keys or len(keys) != len(phase.transfers):
        return None
    payload = [t.label[: -len(".payload")] for t in keys if t.label.endswith(".payload")]
    if len(payload) != 1:
        return None
    rest = {t.label for t in keys} - {f"{payload[0]}.payload", f"{payload[0]}.acc"}
    return None if rest else payload[0]


def build(method: Method, world, batch, dim, dtype: str, hw: Hardware, **options) -> Program:
    """The engine's program for one point (scalar ``world``, ``batch``, ``dim``)."""
    world, batch, dim = _grid(world, batch, dim)
    if world.ndim or batch.ndim or dim.ndim:
        raise ValueError("simulate takes one point: world, batch and dim must be single numbers")
    shape = shape_for(hw, world, batch, dim, dtype, **options)
    _, _, schedule, _ = _counts(method, shape)
    pricer = _Pricer(shape, hw, _compute_dtype(dtype, shape), world, method.kind)
    w = int(world)
    on_node = w if hw.ranks_per_node is None else min(w, hw.ranks_per_node)
    cores_free = not (hw.comm_uses_cores and on_node >= hw.cores)
    share = pricer.core_share
    segments: list[Segment] = [Compute(name="step overhead", seconds=pricer.step_s / share)]
    phases = schedule.phases
    i = 0
    while i < len(phases):
        label = _ring_label(phases[i])
        if label is None:
            segments.extend(_plain(phases[i], pricer, share))
            i += 1
            continue
        end = i
        while end < len(phases) and _ring_label(phases[end]) == label:
            end += 1
        home = None
        if end < len(phases) and not phases[end].transfers:  # the own block, last
            home = Compute(name=phases[end].name, seconds=pricer.compute_s(phases[end]) / share)
        segments.append(_ring(phases[i:end], home, pricer))
        i = end + (home is not None)
    machine = Machine(
        world=w, ranks_per_node=hw.ranks_per_node, cores=hw.cores, moves_on_cores=not cores_free
    )
    return Program(segments=tuple(segments), machine=machine)


def _plain(phase: Phase, pricer: _Pricer, share: float) -> list[Segment]:
    if np.any(np.asarray(phase.repeat) != np.round(np.asarray(phase.repeat))):
        raise ValueError(f"phase {phase.name!r}: repeat must be a whole number")
    for t in phase.transfers:
        if t.op == "p2p":
            raise ValueError(
                f"phase {phase.name!r}: a p2p transfer outside a ring pass ({t.key}) "
                "is not simulated"
            )
    if phase.overlapped and phase.transfers:
        raise ValueError(f"phase {phase.name!r}: overlapped collectives are not simulated")
    one: list[Segment] = [Compute(name=phase.name, seconds=pricer.compute_s(phase) / share)]
    one += [Collective(transfer=pricer.transfer(phase, t)) for t in phase.transfers]
    return one * int(phase.repeat)


def _ring(phases, home: Compute | None, pricer: _Pricer) -> RingPass:
    """One ring pass from its consecutive round phases."""
    parts = []
    for phase in phases:
        by_kind = {t.label.rsplit(".", 1)[1]: t for t in phase.transfers}
        chains = int(by_kind["payload"].directions)
        acc = by_kind.get("acc")
        parts.append(
            RingRounds(
                name=phase.name,
                rounds=int(phase.repeat),
                chains=chains,
                block_s=pricer.compute_s(phase) / pricer.core_share / chains,
                payload=_per_chain(pricer.transfer(phase, by_kind["payload"]), chains),
                acc=None if acc is None else _per_chain(pricer.transfer(phase, acc), chains),
            )
        )
    return RingPass(
        home=home,
        parts=tuple(parts),
        overlap=bool(phases[0].overlapped),
        hide_accumulator=bool(pricer.shape.hide_accumulator),
    )


def _per_chain(priced: Priced, chains: int) -> Priced:
    """The closed form pays a phase's sync once per transfer; the engine once per chain's
    exchange, so each chain pays its share (the α-β time is already per direction)."""
    return dataclasses.replace(
        priced, intra_sync_s=priced.intra_sync_s / chains, inter_sync_s=priced.inter_sync_s / chains
    )
