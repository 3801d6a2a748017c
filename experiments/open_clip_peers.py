"""The peers of our losses, and the contender registry every comparison reads.

:data:`CONTENDERS` lists, in table order, every loss the peer benchmark can run (``sigsim
peers`` and the ``peers`` part of ``sigsim gpu-check`` both read it; one description,
many consumers), each with what it needs to run (:meth:`Contender.unavailable`):

* ours, by registered name (torch block math), and the ring methods again as
  ``<method>+fused``: the same loss with ``SIGSIM_FUSED_BLOCKS=1`` around every step
  (``profiling.losses.fused``: CUDA, or the CPU under ``TRITON_INTERPRET=1``);
* ``open_clip:siglip-bidir`` / ``-shift`` / ``-gather``: ``SigLipLoss(rank, world_size,
  dist_impl=...)``. Its forward is ``(image_features, text_features, logit_scale,
  logit_bias)`` with ``logit_scale`` the multiplier ``t`` (open_clip passes
  ``logit_scale.exp()``), like ours. Per rank it returns
  ``-1/b Σ_{i local} Σ_{j global} log σ(z_ij (t x_i·y_j + β))``: divided by the *local*
  batch ``b``, so its mean over ranks is the global ``-1/N Σ_ij`` of
  ``profiling.losses.reference_loss`` (same convention as ours). Texts travel with
  autograd (``NeighbourExchange``, ``torch.distributed.nn.all_gather``), so after every
  rank's backward a rank's feature gradient is ``∂(Σ_r L_r)/∂x = W ×`` the reference's,
  also as ours; ``logit_scale`` / ``logit_bias`` gradients are this rank's share, whose
  mean over ranks is the reference's (DDP averages them). ``tests/test_peers.py``
  asserts all of this. At W = 1 the three run the same local code.
* ``open_clip:clip-local``: ``ClipLoss(local_loss=True, gather_with_grad=True, rank,
  world_size)``: all-gathers both sides with grad, per rank the mean of the image→text
  and text→image cross-entropies of its ``b`` rows against all ``N`` columns; the mean
  over ranks is the reference softmax loss.
* ``siglip-kernel`` (sigmoid) and ``inf-cl`` (softmax): fused Triton peers, CUDA only,
  W = 1 (``experiments.triton_peers`` gives their conventions and why W = 1).

open-clip-torch's ``src/open_clip/loss.py`` imports only torch, so its wheel can be
installed with ``--no-deps`` and that one file loaded by path
(:func:`load_open_clip_loss`); ``import open_clip`` itself would need timm, tokenizers
and more, and is never done here. :data:`PACKAGES` pins every peer's package; the GPU
machine, which reaches no registry, gets them as wheels (``experiments.gpu_peers``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from profiling.losses import build_loss

OPEN_CLIP_VERSION = "3.3.0"
INSTALL_COMMAND = f".venv/bin/pip install --no-deps open-clip-torch=={OPEN_CLIP_VERSION}"
_MODULE_NAME = "sigsim_open_clip_loss"


class OpenClipMissing(RuntimeError):
    """open-clip-torch is not installed; the message is one line with the pip command."""


def open_clip_loss_path() -> Path:
    """Path of the installed ``open_clip/loss.py`` (the package itself is not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise OpenClipMissing(
            f"open-clip-torch is not installed; install it without its dependencies: "
            f"{INSTALL_COMMAND}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    if not path.is_file():
        raise OpenClipMissing(f"open-clip-torch has no {path}; reinstall: {INSTALL_COMMAND}")
    return path


def load_open_clip_loss() -> ModuleType:
    """open_clip's ``loss.py`` loaded on its own by file path (cached per process)."""
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    path = open_clip_loss_path()
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_MODULE_NAME] = module
    return module


def open_clip_version() -> str | None:
    try:
        return importlib.metadata.version("open-clip-torch")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class Package:
    """A peer's pip package, pinned."""

    name: str
    """The distribution name pip installs (``open-clip-torch``)."""
    version: str
    module: str
    """The import name (``open_clip``)."""

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


OPEN_CLIP = Package("open-clip-torch", OPEN_CLIP_VERSION, "open_clip")
SIGLIP_KERNEL = Package("siglip-kernel", "0.1.2", "siglip_kernel")
INF_CL = Package("inf-cl", "1.2.1", "inf_cl")
PACKAGES = (OPEN_CLIP, INF_CL, SIGLIP_KERNEL)
"""Every peer's package, in the order ``--fetch-wheels`` downloads them."""


def _installed(package: Package) -> bool:
    return importlib.util.find_spec(package.module) is not None


@dataclass(frozen=True, slots=True)
class Contender:
    """One loss in the comparison: what it is, and what it needs to run."""

    name: str
    """Ours: the registered method name, ``+fused`` for the fused tile kernels; a
    peer's: ``open_clip:<variant>``, ``siglip-kernel``, ``inf-cl``."""
    side: str
    """``ours``, or the peer's project: ``open_clip``, ``siglip-kernel``, ``inf-cl``."""
    kind: str
    """``sigmoid`` or ``softmax``: which inputs (bias or not) and which reference."""
    method: str | None = None
    """Ours: the registered method the contender runs."""
    fused: bool = False
    """Ours: every step runs with ``SIGSIM_FUSED_BLOCKS=1`` (else with it unset)."""
    package: Package | None = None
    """A peer's package (None: ours)."""
    needs_cuda: bool = False
    max_world: int | None = None
    """Largest W it is run at (None: any)."""
    limits: str = ""
    """One line: why ``needs_cuda`` / ``max_world``."""
    tolerance: tuple[tuple[str, float], ...] = ()
    """Its own largest relative error per dtype (the dtype, or autocast's, the check
    runs in), where it differs from ``experiments.reference_check.TOLERANCE``."""

    @property
    def ours(self) -> bool:
        return self.side == "ours"

    def tolerance_for(self, dtype: str) -> float | None:
        return dict(self.tolerance).get(dtype)

    def unavailable(self, device: str, world: int) -> str | None:
        """Why this contender cannot run on ``device`` at W = ``world`` (one line), or None."""
        if self.needs_cuda and device != "cuda":
            return f"needs CUDA: {self.limits}"
        if self.max_world is not None and world > self.max_world:
            return f"W = {self.max_world} only: {self.limits}"
        if self.fused:
            if importlib.util.find_spec("triton") is None:
                return "the fused tile kernels need Triton (pip install triton)"
            if device == "cpu" and os.environ.get("TRITON_INTERPRET", "") != "1":
                return (
                    "the fused tile kernels run on CUDA, or on CPU under Triton's "
                    "interpreter (TRITON_INTERPRET=1)"
                )
        if self.package is not None and not _installed(self.package):
            return (
                f"{self.package.name} is not installed: pip install --no-deps "
                f"{self.package.requirement} (GPU machine: sigsim gpu-check --wheels DIR)"
            )
        return None

    def build(self, rank: int, world: int) -> torch.nn.Module:
        if self.ours:
            return build_loss(self.method)
        if self.side == "siglip-kernel":
            from experiments.triton_peers import SiglipKernelLoss

            return SiglipKernelLoss()
        if self.side == "inf-cl":
            from experiments.triton_peers import InfClLoss

            return InfClLoss()
        loss = load_open_clip_loss()
        variant = self.name.removeprefix("open_clip:")
        if variant == "clip-local":
            return loss.ClipLoss(
                local_loss=True, gather_with_grad=True, rank=rank, world_size=world
            )
        return loss.SigLipLoss(
            rank=rank, world_size=world, dist_impl=variant.removeprefix("siglip-")
        )


def _ours(method: str, kind: str, fused: bool = False) -> Contender:
    return Contender(method + "+fused" if fused else method, "ours", kind, method, fused)


_TF32 = (("fp32", 5e-3),)
"""fp32 through Triton's ``tl.dot`` in tf32 (10-bit mantissa): about 1e-3 relative on
logits of size ``t = 10``, beyond the fp32 row's 1e-4."""

CONTENDERS: tuple[Contender, ...] = (
    _ours("sigmoid-ring", "sigmoid"),
    _ours("sigmoid-ring-bidir", "sigmoid"),
    _ours("sigmoid-allgather", "sigmoid"),
    _ours("sigmoid-ring", "sigmoid", fused=True),
    _ours("sigmoid-ring-bidir", "sigmoid", fused=True),
    Contender("open_clip:siglip-bidir", "open_clip", "sigmoid", package=OPEN_CLIP),
    Contender("open_clip:siglip-shift", "open_clip", "sigmoid", package=OPEN_CLIP),
    Contender("open_clip:siglip-gather", "open_clip", "sigmoid", package=OPEN_CLIP),
    Contender(
        "siglip-kernel",
        "siglip-kernel",
        "sigmoid",
        package=SIGLIP_KERNEL,
        needs_cuda=True,
        max_world=1,
        limits="a single-GPU Triton kernel (siglip_kernel.fused_siglip_loss)",
        # bf16: logits rounded to bf16 by the chunk's cuBLAS matmul, the text gradient
        # accumulated across chunks in bf16 (its fused_chunked_bf16 docstring)
        tolerance=(*_TF32, ("bf16", 5e-2)),
    ),
    _ours("softmax-ring", "softmax"),
    _ours("softmax-allgather", "softmax"),
    _ours("softmax-ring", "softmax", fused=True),
    Contender("open_clip:clip-local", "open_clip", "softmax", package=OPEN_CLIP),
    Contender(
        "inf-cl",
        "inf-cl",
        "softmax",
        package=INF_CL,
        needs_cuda=True,
        max_world=1,
        limits="Triton kernels with CUDA-only PTX; at W > 1 it sums the scale gradient "
        "over ranks (experiments.triton_peers)",
        tolerance=_TF32,
    ),
)
CONTENDER_NAMES = tuple(c.name for c in CONTENDERS)


def contender(name: str) -> Contender:
    for c in CONTENDERS:
        if c.name == name:
            return c
    raise ValueError(f"unknown contender {name!r}; known: {', '.join(CONTENDER_NAMES)}")


def split_available(
    names: tuple[str, ...], device: str, world: int
) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the contenders of ``names`` that run here, in order; {name: why not} for the rest)."""
    skipped = {n: r for n in names if (r := contender(n).unavailable(device, world))}
    return tuple(n for n in names if n not in skipped), skipped
