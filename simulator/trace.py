"""A simulated step as a Chrome-trace JSON file, for Perfetto (ui.perfetto.dev) or
chrome://tracing.

Layout (the Trace Event Format's JSON object form): one process per rank (``pid`` = rank,
named ``rank r``, sorted by rank), and in it one thread for the rank's own work
(``tid`` 0: compute slices named after the schedule's phases, and ``wait <op:label>``
slices while it waits) and one per link of bytes arriving (``tid`` 1: from the previous
rank, and collectives; ``tid`` 2: from the next rank, on a bidirectional ring), whose
slices are named with the transfer's ``op:label`` as ``profiling.comm`` keys it, e.g.
``p2p:sigmoid.payload``. Complete events (``"ph": "X"``), times in microseconds from the
step's start; ``otherData`` carries the simulation's summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulator.simulate import Simulation

LANES = {0: "compute and waits", 1: "from previous rank (and collectives)", 2: "from next rank"}


def chrome_trace(sim: Simulation) -> dict[str, Any]:
    """The trace of step 0 (``sim`` must come from ``simulate(..., trace=True)``)."""
    if sim.timeline is None:
        raise ValueError("this simulation kept no timeline: call simulate(..., trace=True)")
    events: list[dict[str, Any]] = []
    lanes = sorted({s.lane for s in sim.timeline} | {0})
    for rank in range(sim.world):
        events.append(_meta("process_name", rank, None, {"name": f"rank {rank}"}))
        events.append(_meta("process_sort_index", rank, None, {"sort_index": rank}))
        for lane in lanes:
            events.append(_meta("thread_name", rank, lane, {"name": LANES[lane]}))
    for piece in sim.timeline:
        for rank in range(sim.world):
            start, end = float(piece.start_s[rank]), float(piece.end_s[rank])
            if end <= start:
                continue
            events.append(
                {
                    "name": piece.name,
                    "cat": piece.cat,
                    "ph": "X",
                    "ts": start * 1e6,
                    "dur": (end - start) * 1e6,
                    "pid": rank,
                    "tid": piece.lane,
                }
            )
    summary = sim.summary()
    summary["step0_s"] = float(sim.step_time_s[0])
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": summary}


def write_trace(sim: Simulation, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace(sim)))
    return path


def _meta(name: str, pid: int, tid: int | None, args: dict) -> dict[str, Any]:
    event: dict[str, Any] = {"name": name, "ph": "M", "pid": pid, "args": args}
    if tid is not None:
        event["tid"] = tid
    return event
