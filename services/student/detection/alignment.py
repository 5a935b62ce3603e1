"""I-DETR's alignment: each matched object query's cross-attention against its instance's teacher map.

The Hungarian matcher that the DETR loss uses assigns ground-truth objects to queries; the same matcher,
run on the final layer's predictions, names the query whose cross-attention rows (every decoder layer: a
query keeps its identity through the decoder) meet that object's C_VLM. The KL itself is the I-ViT's
(services/student/alignment.py: target first, heads averaged). Memory cells masked out as padding are
-inf in the student's log-probabilities; the target is restricted to the unmasked cells and renormalised
there, so padding never turns the loss infinite.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
from transformers.loss.loss_for_object_detection import HungarianMatcher

from services.student.alignment import KLDirection, alignment_loss
from services.student.detection.model import CrossAttentionReport

# A log-probability floor for masked cells: 0 · floor is 0 where -inf would give NaN
_LOG_FLOOR = -1e4


def matcher_for(config) -> nn.Module:
    """The matcher the model's own loss builds (focal-cost for Conditional DETR, softmax-cost for DETR)."""
    matcher_class = DeformableDetrHungarianMatcher if config.model_type == "conditional_detr" else HungarianMatcher
    return matcher_class(class_cost=config.class_cost, bbox_cost=config.bbox_cost, giou_cost=config.giou_cost)


@torch.no_grad()
def match(matcher: nn.Module, logits: torch.Tensor, pred_boxes: torch.Tensor,
          labels: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image (query indices, object indices); images without objects get empty pairs."""
    if not any(len(t["class_labels"]) for t in labels):
        empty = torch.zeros(0, dtype=torch.long)
        return [(empty, empty) for _ in labels]
    return matcher({"logits": logits.float(), "pred_boxes": pred_boxes.float()}, labels)


def instance_alignment_loss(reports: list[CrossAttentionReport], indices: list[tuple[torch.Tensor, torch.Tensor]],
                            maps: list[torch.Tensor], valid: list[torch.Tensor], *, layers: list[int] | None = None,
                            direction: KLDirection = "target-first", smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the chosen decoder layers and the matched objects with a usable map of the KL.

    reports: per decoder layer, log-probabilities (B, H, Q, K); maps[b]: (n_b, K); valid[b]: (n_b,) bool.
    """
    chosen = [reports[i] for i in sorted(set(layers))] if layers else reports
    device = chosen[0].log_probs.device if chosen else torch.device("cpu")
    images = torch.cat([torch.full((len(q),), b, dtype=torch.long) for b, (q, _) in enumerate(indices)])
    queries = torch.cat([q for q, _ in indices]).long()
    target = torch.cat([maps[b][j] for b, (_, j) in enumerate(indices)]) if len(images) else None
    usable = torch.cat([valid[b][j] for b, (_, j) in enumerate(indices)]) if len(images) else None
    if not chosen or target is None or not bool(usable.any()):
        return torch.zeros((), device=device)
    target, usable = target.to(device), usable.to(device)
    rows = [report.log_probs[images.to(device), :, queries.to(device)] for report in chosen]  # (M, H, K) each
    open_cells = torch.isfinite(rows[0]).all(dim=1)  # (M, K): the memory cells this image does not pad
    target = target * open_cells
    mass = target.sum(dim=-1, keepdim=True)
    usable = usable & (mass.squeeze(-1) > 0)
    target = target / mass.clamp_min(1e-12)
    rows = [r.clamp_min(_LOG_FLOOR) for r in rows]
    return alignment_loss(rows, target, usable, direction=direction, heads="mean", smoothing=smoothing)
