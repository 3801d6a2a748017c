"""The GPU check's block part: the tile math, torch against the fused kernels, and its rate.

For the tile a ring computes at the speed issue's GPU point (``b = 16,384``, ``d = 768``,
so the CUDA default tile ``T = 4096``; with ``--cpu`` the tiny plan's sizes), one record
per (block function, operand dtype, path) into ``gpu_blocks.jsonl``:

* the device's **measured matmul rate** for the operand dtype: ``x·yᵀ`` of ``T×d`` by
  ``d×T``, ``2·T²·d`` FLOPs, median of the timed repetitions;
* the **block time**: ``blocks.sigmoid_block`` with both gradients and
  ``blocks.softmax_grad``, each ``6·T²·d`` matmul FLOPs (logits, ``Dx``, ``Dy``), and
  ``blocks.softmax_stats`` (``2·T²·d``, the logits and two log-sum-exps), by the
  torch block math and by the fused Triton kernels (``profiling.losses.fused``,
  ``SIGSIM_FUSED_BLOCKS=1`` for the call), median / p10 / p90 of the repetitions (CUDA
  events on the GPU, ``perf_counter`` on CPU), and the block's FLOP rate as a fraction of
  the measured matmul rate: the speed issue's "block compute at ≥ 50 % of the device's
  bf16 matmul rate";
* **where the time goes**: torch.profiler's top operators by self time on the device
  (``profile``: the Triton kernel or the chain of torch kernels, per call);
* **accuracy**: the loss and ``ΣG`` (sigmoid), ``Dx`` and ``Dy``, each as the largest error
  relative to the largest element of the fp64 result on the same operands.

A path that cannot run (no Triton; the fused kernels on CPU outside Triton's interpreter)
is a record with its one-line reason, not a failure of the check.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from profiling.losses import blocks, fused
from profiling.losses.registry import default_tile

BLOCKS = "gpu_blocks.jsonl"
OPERANDS = {"bf16": torch.bfloat16, "fp32": torch.float32}
KERNELS = {"sigmoid_block": 6, "softmax_stats": 2, "softmax_grad": 6}
"""The block functions timed, with their matmul FLOPs per pair over ``d`` (``k·T²·d``)."""
PATHS = ("torch", "fused")


def _timer(device: torch.device):
    """``time(fn, reps) -> [seconds]``: CUDA events on the GPU, perf_counter elsewhere."""

    def time_calls(fn, reps: int) -> list[float]:
        out = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
            else:
                began = time.perf_counter()
                fn()
                out.append(time.perf_counter() - began)
        return out

    return time_calls


def _inputs(tile: int, dim: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.nn.functional.normalize(
            torch.randn(tile, dim, generator=gen, dtype=torch.float64), dim=1
        )
        for _ in range(2)
    )
    s = 10.0 * (x @ y.T)  # realistic softmax statistics for the gradient pass
    stats = dict(row_lse=torch.logsumexp(s, 1), col_lse=torch.logsumexp(s, 0))
    return x.to(device), y.to(device), {k: v.to(device) for k, v in stats.items()}


def _call(kernel: str, x, y, stats, acc_dtype):
    """One call of ``kernel`` on operands ``x, y``; returns (fn, outputs to compare)."""
    device = x.device
    t = torch.tensor(10.0, dtype=acc_dtype, device=device)
    dx = torch.zeros(x.shape, dtype=acc_dtype, device=device)
    dy = torch.zeros(y.shape, dtype=acc_dtype, device=device)
    sums = torch.zeros(2, dtype=acc_dtype, device=device)
    if kernel == "sigmoid_block":
        bias = torch.tensor(-10.0, dtype=acc_dtype, device=device)

        def fn():
            blocks.sigmoid_block(x, y, t, bias, diag=0, tile=None, dx=dx, dy=dy, sums=sums)

        return fn, {"loss": sums[:1], "sum_g": sums[1:], "dx": dx, "dy": dy}
    lse = {k: v.to(acc_dtype) for k, v in stats.items()}
    if kernel == "softmax_stats":
        running = {k: v.clone() for k, v in lse.items()}

        def fn():
            blocks.softmax_stats(x, y, t, tile=None, diag=0, sums=sums, **running)

        return fn, {"row_lse": running["row_lse"], "col_lse": running["col_lse"], "sum": sums}
    coef = torch.tensor(0.5 / x.shape[0], dtype=acc_dtype, device=device)

    def fn():
        blocks.softmax_grad(
            x, y, t, tile=None, row_coef=coef, col_coef=coef, diag=0, dx=dx, dy=dy, **lse
        )

    return fn, {"dx": dx, "dy": dy}


def _relative_errors(got: dict, want: dict) -> dict:
    return {
        k: float((got[k].double() - want[k]).abs().max() / max(float(want[k].abs().max()), 1e-30))
        for k in want
    }


def _with_fused(on: bool):
    before = os.environ.get(fused.SWITCH)
    os.environ[fused.SWITCH] = "1" if on else ""
    return before


def _restore(before) -> None:
    if before is None:
        os.environ.pop(fused.SWITCH, None)
    else:
        os.environ[fused.SWITCH] = before


def run_block_kernels(batch: int, dim: int, device, path: Path, deadline: float, log) -> None:
    """Every (kernel, operands, path) record into ``path``; stops starting at ``deadline``."""
    tile = int(default_tile(batch, dim, device.type))
    time_calls = _timer(device)
    reps, warmup = (10, 2) if device.type == "cuda" else (3, 1)
    x64, y64, stats = _inputs(tile, dim, device)
    for name, dtype in OPERANDS.items():
        x, y = x64.to(dtype), y64.to(dtype)
        rate = _matmul_rate(x, y, time_calls, reps, warmup)
        for kernel, per_pair in KERNELS.items():
            flops = per_pair * tile * tile * dim
            fn64, want = _call(kernel, x.double(), y.double(), stats, torch.float64)
            fn64()
            for which in PATHS:
                record = dict(kernel=kernel, operands=name, path=which, tile=tile, dim=dim)
                record.update(device=str(device), matmul_flops_per_s=rate, block_flops=flops)
                if time.time() > deadline:
                    record["error"] = "skipped: the part's deadline passed"
                    _write(path, record, log)
                    continue
                before = _with_fused(which == "fused")
                try:
                    fn, outputs = _call(kernel, x, y, stats, torch.float32)
                    fn()  # checked once, from zeroed accumulators
                    record["relative_error_vs_fp64"] = _relative_errors(outputs, want)
                    for _ in range(warmup):
                        fn()
                    times = sorted(time_calls(fn, reps))
                    median = statistics.median(times)
                    record.update(
                        median_s=median,
                        p10_s=times[len(times) // 10],
                        p90_s=times[(9 * len(times)) // 10],
                        block_flops_per_s=flops / median,
                        fraction_of_matmul_rate=flops / median / rate,
                    )
                    record["profile"] = _breakdown(fn, device)
                except Exception as exc:  # a path that cannot run here is a result
                    record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                finally:
                    _restore(before)
                _write(path, record, log)


def _breakdown(fn, device, calls: int = 3, top: int = 8) -> list[dict]:
    """Where one block's time goes: torch.profiler's ``top`` operators by self time on
    the device (CPU time on CPU) over ``calls`` calls, per call, in seconds."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, attr, 0.0), reverse=True)
    return [
        {"op": e.key, "self_s_per_call": getattr(e, attr, 0.0) / 1e6 / calls, "count": e.count}
        for e in rows[:top]
        if getattr(e, attr, 0.0) > 0
    ]


def _matmul_rate(x, y, time_calls, reps: int, warmup: int) -> float:
    """FLOP/s of ``x·yᵀ`` on this device: ``2·m·n·d`` over the median time."""

    def product():
        return x @ y.T

    for _ in range(warmup):
        product()
    return 2 * x.shape[0] * y.shape[0] * x.shape[1] / statistics.median(time_calls(product, reps))


def _write(path: Path, record: dict, log) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    what = f"blocks {record['kernel']} {record['operands']} {record['path']} T={record['tile']}"
    if "error" in record:
        log(f"{what}: {record['error']}")
    else:
        log(
            f"{what}: {record['median_s'] * 1e3:.3f} ms, "
            f"{record['fraction_of_matmul_rate']:.0%} of the measured matmul rate "
            f"({record['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s); "
            f"errors vs fp64 {', '.join(f'{k} {v:.1e}' for k, v in record['relative_error_vs_fp64'].items())}"
        )
