"""The alignment loss L_align between the student's attention and the teacher's C_VLM (appendix §10).

The paper writes D_KL(C_AGT ‖ C_VLM), but C_VLM = max(0, fore − back) / ‖·‖₁ has exact zeros,
which makes that direction infinite wherever the student puts mass the teacher does not. The
default here is the target-first direction D_KL(C_VLM ‖ C_AGT), the usual distillation form: it
is finite for any C_VLM (0 · log 0 = 0) and the student's log-probabilities come from a
log-softmax, so they are never -inf. The paper's direction is available as `model-first`, made
finite by smoothing C_VLM towards uniform. See docs/method.md.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

KLDirection = Literal["target-first", "model-first"]
HeadReduction = Literal["mean", "each"]


def alignment_loss(layers: list[torch.Tensor], target: torch.Tensor, valid: torch.Tensor, *,
                   direction: KLDirection = "target-first", heads: HeadReduction = "mean",
                   smoothing: float = 0.0) -> torch.Tensor:
    """Mean over layers and valid samples of the KL between student rows and C_VLM.

    layers: per layer, (B, H, P) log-probabilities over the P image patches.
    target: (B, P) C_VLM on the student's patch grid, rows summing to 1.
    valid: (B,) bool; degenerate maps (all zero) and missing maps are skipped.
    heads: `mean` aligns the heads' average attention (heads may differ), `each` every head.
    """
    if not layers or not bool(valid.any()):
        device = layers[0].device if layers else target.device
        return torch.zeros((), device=device)
    if direction == "model-first" and smoothing <= 0:
        raise ValueError("the model-first KL needs smoothing > 0: C_VLM has exact zeros")
    target = target[valid].float()
    if smoothing > 0:
        target = (1 - smoothing) * target + smoothing / target.shape[-1]
    losses = []
    for log_q in layers:
        log_q = log_q[valid].float()
        if heads == "mean":
            log_q = (torch.logsumexp(log_q, dim=1) - math.log(log_q.shape[1])).unsqueeze(1)
        p = target.unsqueeze(1).expand_as(log_q)
        # target-first: KL(C_VLM || student); model-first: KL(student || smoothed C_VLM)
        kl = torch.xlogy(p, p) - p * log_q if direction == "target-first" else log_q.exp() * (log_q - p.log())
        losses.append(kl.sum(dim=-1).mean())
    return torch.stack(losses).mean()
