"""The fused-kernel peers, siglip-kernel and inf-cl, as losses with our forward signature.

Both are Triton code for CUDA only; ``experiments.open_clip_peers`` registers them as
contenders (``needs CUDA``, W = 1) and never builds them elsewhere. Each module takes
``(image_features, text_features, logit_scale, logit_bias)`` with ``logit_scale`` the
multiplier ``t`` (as ours and open_clip's) and returns the loss whose value and
gradients ``experiments.reference_check`` compares with ``profiling.losses.reference_loss``:

* :class:`SiglipKernelLoss`: ``siglip_kernel.fused_siglip_loss(x, y, log t, β)`` (pip
  ``siglip-kernel==0.1.2``), ``-1/b Σ_ij log σ(z_ij (t x_i·y_j + β))`` over the ``b``
  local rows: at W = 1 the reference SigLIP loss. Its router sends bf16/fp16 features to
  ``fused_chunked_bf16`` (cuBLAS matmuls in the input dtype, a Triton sigmoid-BCE pass
  per ``c × b`` chunk, ``c = 4096`` on SM90; gradients computed in the forward, the text
  gradient accumulated across chunks in the input dtype, the loss returned in it) and
  fp32 features to its fully fused kernel (``hopper`` on SM89+). It does not follow
  autocast: inside ``torch.autocast`` the module hands it the features in autocast's
  dtype (what autocast gives a matmul, ``profiling.losses.precision.cast_for_autocast``)
  and runs it with autocast off, as a user passing half features does. Single GPU: its
  ``DistributedSigLIPLoss`` is another design, not this contender.
* :class:`InfClLoss`: inf-cl's ``cal_inf_loss`` (pip ``inf-cl==1.2.1``), the mean of
  ``cal_inf_loss(x, y, scale=t)`` (image→text cross-entropy, mean over local rows) and
  ``cal_inf_loss(y, x, scale=t)`` (text→image): the reference CLIP loss at W = 1. It
  casts the features to fp32 and tiles the log-sum-exp in Triton (``tl.dot`` with
  operands rounded to tf32 by inline PTX in the backward), splitting ``d`` into heads
  of ``head_dim`` (the largest of 256, 128, 64, 32, 16 dividing ``d``). With a process
  group it runs its ring (``InfProb``) on the default group: at W = 1 one block, and the
  key gradient sent to itself by ``batch_isend_irecv``; its ``GradientGather``
  all-reduces (sums) the scale gradient over ranks, which at W > 1 is ``W ×`` the
  mean our check expects, so it is registered for W = 1.
"""

from __future__ import annotations

import torch

from profiling.losses.precision import cast_for_autocast

INF_CL_HEAD_DIMS = (256, 128, 64, 32, 16)
"""Head widths inf-cl's kernels take (its docstring: 16, 32, 64, 128 or 256)."""


class SiglipKernelLoss(torch.nn.Module):
    """siglip-kernel's ``fused_siglip_loss`` (backend ``auto``) on this rank's features."""

    def __init__(self):
        super().__init__()
        from siglip_kernel import fused_siglip_loss

        self._loss = fused_siglip_loss

    def forward(self, image_features, text_features, logit_scale, logit_bias):
        x, y = cast_for_autocast(image_features), cast_for_autocast(text_features)
        with torch.autocast(x.device.type, enabled=False):
            return self._loss(x, y, logit_scale.log(), logit_bias)


def inf_cl_head_dim(dim: int) -> int:
    """The widest head inf-cl takes that divides ``dim``; ValueError (one line) if none."""
    for head in INF_CL_HEAD_DIMS:
        if dim % head == 0:
            return head
    raise ValueError(f"inf-cl needs d divisible by 16, got d = {dim}")


class InfClLoss(torch.nn.Module):
    """inf-cl's ``cal_inf_loss`` both ways, averaged: the symmetric CLIP loss."""

    def __init__(self):
        super().__init__()
        from inf_cl import cal_inf_loss

        self._loss = cal_inf_loss

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        if logit_bias is not None:
            raise ValueError("inf-cl's CLIP loss takes no logit_bias")
        head = inf_cl_head_dim(image_features.shape[1])
        image_to_text = self._loss(image_features, text_features, scale=logit_scale, head_dim=head)
        text_to_image = self._loss(text_features, image_features, scale=logit_scale, head_dim=head)
        return (image_to_text + text_to_image) / 2
