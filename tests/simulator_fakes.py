"""Test helpers for the simulator: small fake methods and hardware profiles with round numbers.

The fake methods are built as ``registry.Method`` objects and passed to ``predict``
directly; they are never registered in the shared registry.
"""

from __future__ import annotations

import copy
import json

import numpy as np

from profiling.losses.registry import Method, Phase, Schedule, Shape, Transfer
from simulator.hardware import BUNDLED_DIR, parse_profile


def ring_schedule(shape: Shape) -> Schedule:
    """W−1 overlapped ring rounds (payload p2p), the own block and a backward all-gather."""
    b, d, w, s = shape.batch, shape.dim, shape.world, shape.elem_bytes
    payload = b * d * s
    return Schedule(
        (
            Phase(
                name="round",
                pass_="forward",
                repeat=w - 1,
                matmul_flops=2 * b * b * d,
                pointwise_elems=b * b,
                transfers=(
                    Transfer(op="p2p", label="fake.payload", bytes_sent=payload,
                             bytes_received=payload, messages=1, peer="neighbor"),
                ),
                overlapped=shape.overlap,
            ),
            Phase(name="home", pass_="forward", repeat=1, matmul_flops=2 * b * b * d,
                  pointwise_elems=b * b),
            Phase(
                name="gather",
                pass_="backward",
                repeat=1,
                matmul_flops=4 * b * b * d,
                transfers=(
                    Transfer(op="all_gather", label="fake.grad", bytes_sent=(w - 1) * payload,
                             bytes_received=(w - 1) * payload, messages=w - 1),
                ),
            ),
        )
    )  # fmt: skip


def ring_memory(shape: Shape) -> dict:
    b, d, s = shape.batch, shape.dim, shape.elem_bytes
    return {"payloads": 2 * b * d * s, "block": b * b * shape.compute_bytes, "grads": b * d * s}


def make_method(schedule=ring_schedule, memory=ring_memory, name="fake-ring") -> Method:
    return Method(
        name=name,
        kind="sigmoid",
        summary="fake method for simulator tests",
        loss="torch.nn:Identity",
        schedule=schedule,
        memory_terms=memory,
        ring=True,
    )


def bidir_method() -> Method:
    """One phase of W−1 rounds sending ``2·b·d·s`` bytes over two directions at once."""

    def schedule(shape):
        nbytes = 2 * shape.batch * shape.dim * shape.elem_bytes
        transfer = Transfer(op="p2p", label="bidir", bytes_sent=nbytes, bytes_received=nbytes,
                            messages=2, peer="neighbor", directions=2)  # fmt: skip
        return Schedule((Phase(name="r", pass_="forward", repeat=shape.world - 1,
                               transfers=(transfer,)),))  # fmt: skip

    return make_method(schedule, lambda shape: {"none": 0 * shape.batch}, "fake-bidir")


def global_block_method() -> Method:
    """A ``b×N`` logit block in memory: overflows int64 at N = 10^8 with large b·d."""

    def memory(shape):
        return {"block": shape.batch * shape.global_batch * shape.dim * shape.compute_bytes}

    return make_method(ring_schedule, memory, "fake-global")


def profile_dict(**changes) -> dict:
    """The bundled H100 profile as a dict with round numbers, then ``changes`` applied
    (dotted keys → plain values, wrapped with a source)."""
    data = json.loads((BUNDLED_DIR / "h100-sxm.json").read_text())
    data = copy.deepcopy(data)
    base = {
        "compute.matmul_TFLOPs.fp32": 1.0,
        "compute.pointwise_Gelem_per_s.fp32": 1.0,
        "compute.phase_overhead_us": 10.0,
        "compute.step_overhead_us": 0.0,
        "compute.collective_call_us": 0.0,
        "intra_node.p2p.alpha_us": 10.0,
        "intra_node.p2p.beta_us_per_MB": 100.0,
        "intra_node.all_gather.base_us": 5.0,
        "intra_node.all_gather.alpha_us": 10.0,
        "intra_node.all_gather.beta_us_per_MB": 100.0,
        "inter_node.p2p.alpha_us": 50.0,
        "inter_node.p2p.beta_us_per_MB": 400.0,
        "inter_node.all_gather.base_us": 5.0,
        "inter_node.all_gather.alpha_us": 50.0,
        "inter_node.all_gather.beta_us_per_MB": 400.0,
    }
    for key, value in (base | changes).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value if isinstance(value, dict | str) or value is None else {
            "value": value, "source": "test"}  # fmt: skip
    return data


def make_hardware(**changes):
    return parse_profile(profile_dict(**changes), "<test profile>")


def cpu_hardware(**changes):
    """Two cores, one thread per rank, ranks on one host, gloo-like (comm uses cores)."""
    return make_hardware(
        **{
            "cores": 2,
            "ranks_per_node": {"value": None, "source": "test: one host"},
            "comm_uses_cores": True,
            "memory_shared": True,
            "inter_node": None,
            "intra_node.oversubscribed_wait_us": 1000.0,
        }
        | changes
    )


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
