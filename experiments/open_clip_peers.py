"""open_clip's distributed losses as peers of ours, loaded without open_clip's dependencies.

open-clip-torch's ``src/open_clip/loss.py`` imports only torch, so the wheel can be
installed with ``--no-deps`` and that one file loaded by path
(:func:`load_open_clip_loss`); ``import open_clip`` itself would need timm, tokenizers
and more, and is never done here.

:data:`CONTENDERS` lists, in table order, every loss the peer benchmark runs, ours (by
registered name) and open_clip's:

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
  asserts all of this.
* ``open_clip:clip-local``: ``ClipLoss(local_loss=True, gather_with_grad=True, rank,
  world_size)``: all-gathers both sides with grad, per rank the mean of the image→text
  and text→image cross-entropies of its ``b`` rows against all ``N`` columns; the mean
  over ranks is the reference softmax loss.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
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
class Contender:
    """One loss in the comparison."""

    name: str
    """Ours: the registered method name; open_clip's: ``open_clip:<variant>``."""
    side: str
    """``ours`` or ``open_clip``."""
    kind: str
    """``sigmoid`` or ``softmax``: which inputs (bias or not) and which reference."""

    def build(self, rank: int, world: int) -> torch.nn.Module:
        if self.side == "ours":
            return build_loss(self.name)
        loss = load_open_clip_loss()
        variant = self.name.removeprefix("open_clip:")
        if variant == "clip-local":
            return loss.ClipLoss(
                local_loss=True, gather_with_grad=True, rank=rank, world_size=world
            )
        return loss.SigLipLoss(
            rank=rank, world_size=world, dist_impl=variant.removeprefix("siglip-")
        )


CONTENDERS: tuple[Contender, ...] = (
    Contender("sigmoid-ring", "ours", "sigmoid"),
    Contender("sigmoid-ring-bidir", "ours", "sigmoid"),
    Contender("sigmoid-allgather", "ours", "sigmoid"),
    Contender("open_clip:siglip-bidir", "open_clip", "sigmoid"),
    Contender("open_clip:siglip-shift", "open_clip", "sigmoid"),
    Contender("open_clip:siglip-gather", "open_clip", "sigmoid"),
    Contender("softmax-ring", "ours", "softmax"),
    Contender("softmax-allgather", "ours", "softmax"),
    Contender("open_clip:clip-local", "open_clip", "softmax"),
)
CONTENDER_NAMES = tuple(c.name for c in CONTENDERS)


def contender(name: str) -> Contender:
    for c in CONTENDERS:
        if c.name == name:
            return c
    raise ValueError(f"unknown contender {name!r}; known: {', '.join(CONTENDER_NAMES)}")
