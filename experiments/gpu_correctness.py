"""Correctness of every method on the device at hand: W = 1 and an emulated small W.

* ``W = 1``: the method runs in the real (one-rank) process group of the calling process
  (NCCL on a GPU, gloo on the CPU) and is compared with ``reference_loss``.
* emulated ``W > 1`` (:func:`check_emulated`): rank 0 runs on the device, its ``W − 1``
  peers run as CPU threads of the same process (``profiling.emulate.run_exact``), each
  computing its real share; messages cross devices in the thread mailboxes. This is
  exact emulation with the peers moved to the CPU: on CUDA, peer threads on the same
  GPU would deadlock (autograd runs every CUDA backward in one device thread), CPU peers
  do not. The losses' cross-rank shape check compares devices, so it is switched off
  here (``check_ranks=False``). Every rank's loss and gradients are compared with the
  reference (rank 0's are the device's).

Each result is one dict: method, world, where, max relative error, PASS/FAIL
(tolerances of ``experiments.reference_check``).
"""

from __future__ import annotations

import torch

from experiments.reference_check import RankResult, reference_errors
from profiling import comm
from profiling.emulate import ThreadTransport, run_exact
from profiling.losses import build_loss, get_method
from profiling.measure import PointConfig, forward, make_inputs


class MixedDeviceTransport(ThreadTransport):
    """A thread rank's transport whose peers may live on another device.

    ``ThreadTransport`` copies all-gathered rows and p2p messages with ``copy_``, which
    crosses devices; only its reduce-scatter adds peers' tensors in place, so that one
    moves each part to this rank's device first.
    """

    def _reduce_scatter(self, tensor):
        n = tensor.shape[0] // self.world_size
        out = tensor.new_empty((n, *tensor.shape[1:]))
        rows = slice(self.rank * n, (self.rank + 1) * n)

        def reduce(parts):
            with torch.no_grad():
                out.copy_(parts[0][rows])
                for part in parts[1:]:
                    out.add_(part[rows].to(out.device))

        self.hub.exchange(self.rank, tensor.detach(), reduce)
        return out


def _rank_result(rank: int, loss, config: PointConfig, device) -> RankResult:
    inputs = make_inputs(config, rank, device)
    value = forward(loss, inputs)
    value.backward()
    return RankResult(
        rank=rank,
        loss=value.detach().cpu(),
        image_grad=inputs.image.grad.detach().cpu(),
        text_grad=inputs.text.grad.detach().cpu(),
        log_scale_grad=inputs.log_scale.grad.detach().cpu(),
        bias_grad=None if inputs.bias is None else inputs.bias.grad.detach().cpu(),
    )


def _outcome(config: PointConfig, where: str, errors: dict) -> dict:
    return {
        "method": config.method,
        "world": config.world,
        "batch": config.batch,
        "dim": config.dim,
        "dtype": config.dtype,
        "where": where,
        "passed": errors["passed"],
        "max_rel_error": errors["max_rel_error"],
        "tolerance": errors["tolerance"],
        "rel_errors": errors["rel_errors"],
        "loss": errors["loss"],
        "reference_loss": errors["reference_loss"],
    }


def check_single_rank(config: PointConfig, device: torch.device) -> dict:
    """W = 1 in the calling process's one-rank process group."""
    loss = build_loss(config.method)
    result = _rank_result(0, loss, config, device)
    errors = reference_errors(get_method(config.method).kind, config, [result])
    return _outcome(config, f"W=1 process group on {device.type}", errors)


def check_emulated(config: PointConfig, device: torch.device) -> dict:
    """Rank 0 on ``device``, ranks 1..W-1 as CPU threads; every rank against the reference."""
    cpu = torch.device("cpu")

    def one_rank(rank, transport, group):
        mixed = MixedDeviceTransport(transport.hub, rank)
        with comm.use_transport(mixed):
            loss = build_loss(config.method, check_ranks=False)
            return _rank_result(rank, loss, config, device if rank == 0 else cpu)

    results = run_exact(config.world, one_rank, timeout_s=120.0)
    errors = reference_errors(get_method(config.method).kind, config, results)
    where = f"emulated: rank 0 on {device.type}, {config.world - 1} CPU peer threads"
    return _outcome(config, where, errors)
