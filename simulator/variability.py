"""What makes one simulated step differ from the next: jitter, stragglers, a slow node or link.

Every event the simulator (:mod:`simulator.events`) times has a base duration from the
closed form's pricing; variability multiplies it:

    duration = base · jitter(kind) · slowdown(rank or link)

* **Jitter** (:class:`Jitter`): a fresh multiplier per event, per rank and per step,
  drawn from a named distribution with a given median, one per event kind
  (:data:`KINDS`: ``compute`` blocks and fixed costs, ``p2p`` exchanges, ``collective``
  calls; a collective is one draw per call and step, shared by its ranks since they
  leave it together). Distributions:

  - ``lognormal``: ``median · exp(σ·Z)``, ``Z`` standard normal;
  - ``exponential``: ``median · (1 + E) / (1 + σ·ln 2)``, ``E`` exponential of mean σ
    (a floor at ``median / (1 + σ ln 2)`` and a long right tail: a scheduler's wake-up
    delay), median exactly ``median``;
  - ``none``: always ``median``.

* **Preemption** (:class:`Preemption`, shared-core machines only): where a node's ranks
  fill or outnumber its cores, nothing is left for the operating system's other work, so
  now and then a rank loses its core for a whole time slice: a stall of ``stall_s``
  added to its clock, ``per_compute_s`` times per second of its compute (Poisson; only
  where the ranks fill the cores exactly: beyond, processor sharing slices the time) and
  ``per_wake`` times per wait it slept through (a rank woken by its peer may find its
  core taken). Additive, not a multiplier: measured on the 2-core VM, the stalled steps of
  every size at ``W = 2`` are 3–4 ms (a scheduler tick) above the rest (``docs/simulator.md``).
* **Stragglers** ``{rank: slowdown}``: that rank computes ``slowdown`` times slower.
* **Slow node** ``(node, slowdown)``: every rank of that node computes slower (nodes
  hold ``ranks_per_node`` consecutive ranks; one node when the profile has none).
* **Slow link** ``(rank, slowdown)``: the link between ``rank`` and ``rank + 1`` (both
  directions) moves bytes ``slowdown`` times slower; ring collectives, as slow as their
  slowest hop, slow down by the same factor.

Draws come from one ``numpy.random.Generator`` seeded by the caller, so a seed fixes
every sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

KINDS = ("compute", "p2p", "collective")
DISTRIBUTIONS = ("lognormal", "exponential", "none")


@dataclass(frozen=True, kw_only=True, slots=True)
class Jitter:
    """A multiplier distribution for one event kind."""

    distribution: str = "lognormal"
    """One of :data:`DISTRIBUTIONS`."""
    median: float = 1.0
    """Median multiplier (1: the base cost is the typical event)."""
    sigma: float = 0.0
    """Spread: σ of log for ``lognormal``, mean of the tail for ``exponential``."""

    def __post_init__(self):
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown jitter distribution {self.distribution!r}; "
                f"known: {', '.join(DISTRIBUTIONS)}"
            )
        if not (math.isfinite(self.median) and self.median > 0):
            raise ValueError(f"jitter median must be a positive number, got {self.median!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"jitter sigma must be a number ≥ 0, got {self.sigma!r}")

    @property
    def constant(self) -> bool:
        return self.distribution == "none" or self.sigma == 0

    def draw(self, rng: np.random.Generator, shape) -> np.ndarray | float:
        """Multipliers of the given shape (a float when the distribution is constant)."""
        if self.constant:
            return self.median
        if self.distribution == "lognormal":
            z = rng.standard_normal(shape)
            z *= self.sigma
            return np.exp(z, out=z) * self.median if self.median != 1 else np.exp(z, out=z)
        tail = rng.standard_exponential(shape)
        tail *= self.sigma
        tail += 1.0
        return tail * (self.median / (1.0 + self.sigma * math.log(2)))

    def draw_mean(self, rng: np.random.Generator, shape, n: int) -> np.ndarray | float:
        """Multipliers each standing for the mean of ``n`` independent draws (the engine's
        coarse rounds, :mod:`simulator.events`). ``exponential``: exact, the tail's mean
        is Gamma(n, σ/n); ``lognormal``: the lognormal with the mean's exact mean and
        variance (Fenton–Wilkinson): ``s² = ln(1 + (e^{σ²} − 1)/n)``, log-mean
        ``ln(median) + σ²/2 − s²/2``; ``n = 1`` is :meth:`draw`."""
        if n == 1 or self.constant:
            return self.draw(rng, shape)
        if self.distribution == "lognormal":
            s2 = math.log1p(math.expm1(self.sigma**2) / n)
            z = rng.standard_normal(shape)
            z *= math.sqrt(s2)
            z += math.log(self.median) + (self.sigma**2 - s2) / 2
            return np.exp(z, out=z)
        tail = rng.gamma(n, self.sigma / n, shape)
        tail += 1.0
        return tail * (self.median / (1.0 + self.sigma * math.log(2)))


@dataclass(frozen=True, kw_only=True, slots=True)
class Preemption:
    """Stalls of a rank whose node has no idle core (module docstring)."""

    stall_s: float = 0.0
    """Length of one stall, seconds (a time slice of the operating system's scheduler)."""
    per_compute_s: float = 0.0
    """Mean stalls per second of a rank's compute (including time stretched by sharing)."""
    per_wake: float = 0.0
    """Mean stalls per wait a rank slept through (p2p wait or collective)."""

    def __post_init__(self):
        for name in ("stall_s", "per_compute_s", "per_wake"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"preemption {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"preemption {name} must be a finite number ≥ 0, got {value!r}")

    @property
    def active(self) -> bool:
        return self.stall_s > 0 and (self.per_compute_s > 0 or self.per_wake > 0)

    def stalls(self, rng: np.random.Generator, mean: np.ndarray) -> np.ndarray:
        """Seconds of stall for Poisson counts of the given ``mean`` (an array)."""
        return rng.poisson(mean) * self.stall_s


@dataclass(frozen=True, kw_only=True, slots=True)
class Variability:
    """Everything that varies between steps and ranks (module docstring)."""

    jitter: dict[str, Jitter] = field(default_factory=dict)
    """Event kind (:data:`KINDS`) → its jitter; a kind left out has none."""
    stragglers: dict[int, float] = field(default_factory=dict)
    """Rank → compute slowdown (≥ 1 slower, < 1 faster)."""
    slow_node: tuple[int, float] | None = None
    """(node index, compute slowdown of its ranks)."""
    slow_link: tuple[int, float] | None = None
    """(rank, slowdown of the link between it and the next rank)."""
    preemption: Preemption | None = None
    """Stalls where a node's ranks fill its cores (None: none)."""

    def __post_init__(self):
        for kind, value in self.jitter.items():
            if kind not in KINDS:
                raise ValueError(f"unknown jitter kind {kind!r}; known: {', '.join(KINDS)}")
            if not isinstance(value, Jitter):
                raise ValueError(f"jitter for {kind!r} must be a Jitter, got {value!r}")
        for rank, slowdown in self.stragglers.items():
            _check_factor(f"straggler rank {rank}", slowdown)
        for name, pair in (("slow node", self.slow_node), ("slow link", self.slow_link)):
            if pair is not None:
                _check_factor(name, pair[1])
        if self.preemption is not None and not isinstance(self.preemption, Preemption):
            raise ValueError(f"preemption must be a Preemption, got {self.preemption!r}")

    def check(self, world: int, nodes: int) -> None:
        """Refuse ranks, nodes and links that the world does not have."""
        for rank in self.stragglers:
            if not 0 <= rank < world:
                raise ValueError(f"straggler rank {rank} is outside 0..{world - 1}")
        if self.slow_node is not None and not 0 <= self.slow_node[0] < nodes:
            raise ValueError(f"slow node {self.slow_node[0]} is outside 0..{nodes - 1}")
        if self.slow_link is not None and not 0 <= self.slow_link[0] < world:
            raise ValueError(f"slow link rank {self.slow_link[0]} is outside 0..{world - 1}")

    def compute_slowdown(self, world: int, node_of_rank: np.ndarray) -> np.ndarray:
        """Per-rank compute multiplier from stragglers and the slow node, shape ``(W,)``."""
        factor = np.ones(world)
        for rank, slowdown in self.stragglers.items():
            factor[rank] *= slowdown
        if self.slow_node is not None:
            factor[node_of_rank == self.slow_node[0]] *= self.slow_node[1]
        return factor

    def link_slowdown(self, world: int) -> np.ndarray:
        """Multiplier of the link between rank ``r`` and ``r + 1`` (mod W), shape ``(W,)``."""
        factor = np.ones(world)
        if self.slow_link is not None:
            factor[self.slow_link[0]] = self.slow_link[1]
        return factor


def _check_factor(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}: slowdown must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: slowdown must be finite, got {value!r}")


def parse_jitter(text: str | None) -> dict[str, Jitter]:
    """``"lognormal:0.1"`` (every kind), or ``"compute=lognormal:0.05,p2p=exponential:0.3"``;
    an optional third field is the median (``lognormal:0.1:1.05``); empty: no jitter."""
    out: dict[str, Jitter] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        kinds, _, spec = part.rpartition("=")
        fields = spec.split(":")
        if len(fields) not in (2, 3):
            raise ValueError(
                f"jitter {part!r}: expected [kind=]distribution:sigma[:median], "
                "e.g. lognormal:0.1 or p2p=exponential:0.3"
            )
        try:
            numbers = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"jitter {part!r}: sigma and median must be numbers") from None
        jitter = Jitter(
            distribution=fields[0],
            sigma=numbers[0],
            median=numbers[1] if len(numbers) > 1 else 1.0,
        )
        for kind in (kinds,) if kinds else KINDS:
            if kind not in KINDS:
                raise ValueError(f"unknown jitter kind {kind!r}; known: {', '.join(KINDS)}")
            out[kind] = jitter
    return out


def parse_factors(text: str | None, what: str) -> dict[int, float]:
    """``"3:1.5,17:2"`` → ``{3: 1.5, 17: 2.0}`` (index: slowdown)."""
    out: dict[int, float] = {}
    if not text:
        return out
    for part in text.split(","):
        index, sep, factor = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            out[int(index)] = float(factor)
        except ValueError:
            raise ValueError(
                f"{what} {part.strip()!r}: expected INDEX:SLOWDOWN, e.g. 3:1.5"
            ) from None
    return out
