"""A few validation images per epoch for the dashboard: boxes (truth and predicted) beside the instance maps.

Saved by the training loop to `RUN/samples/epoch-NNNN.json` like the I-ViT's pictures, with `task: detection`;
each sample has the image (PNG, base64, the model's letterboxed input), its true and predicted boxes in that
image's pixels, and per true object the teacher's instance map and (I-DETR) the matched query's constrained
attention, both on the encoder memory grid.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from services.student.detection.alignment import match
from services.student.detection.data import MEAN, STD
from services.student.detection.evaluate import detections, to_coco_boxes
from services.student.detection.model import InteractionCollector

if TYPE_CHECKING:
    from services.student.detection.trainer import DetectionTrainer

SCORE_FLOOR = 0.3  # predicted boxes drawn: at most 10, at least this confident


def _png(pixels: torch.Tensor) -> str:
    array = ((pixels.permute(1, 2, 0).numpy() * STD + MEAN).clip(0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _rounded(values: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in values.flatten()]


@torch.no_grad()
def sample_detections(trainer: DetectionTrainer, count: int = 4) -> dict[str, Any]:
    split = trainer.data.val if trainer.data.val is not None and len(trainer.data.val) else trainer.data.train
    builder = trainer.batches(split, augment=False, map_source=trainer.map_source, batch_size=count)
    batch = builder.build(0, 0)
    if not batch.images:
        return {"task": "detection", "epoch": trainer.epoch, "grid": list(trainer.grid), "samples": []}
    model = trainer.model.eval()
    collector = InteractionCollector()
    out = model(pixel_values=batch.pixel_values.to(trainer.device), pixel_mask=batch.pixel_mask.to(trainer.device),
                interactions=collector)
    names = trainer.data.category_names
    found = detections(out.logits, out.pred_boxes, model.config.model_type == "conditional_detr", top_k=10)
    indices = match(trainer.matcher, out.logits, out.pred_boxes, batch.labels)
    samples = []
    for b, image in enumerate(batch.images):
        scale = trainer.config.input_size / max(image.width, image.height)  # original pixels -> input pixels
        scores, classes, boxes = found[b]
        keep = scores >= SCORE_FLOOR
        predicted = [{"box": [round(float(v) * scale, 1) for v in box], "label": names[trainer.category_ids[int(c)]],
                      "score": round(float(s), 3)}
                     for s, c, box in zip(scores[keep], classes[keep], to_coco_boxes(boxes[keep], image.width,
                                                                                       image.height), strict=True)]
        truth = [{"box": [round(v * scale, 1) for v in o.bbox], "label": names[o.category_id]} for o in image.objects
                 if not o.iscrowd]
        query_of = {int(j): int(q) for q, j in zip(*indices[b], strict=True)}
        for j, item in enumerate(truth):
            if batch.maps is not None and j < len(batch.maps[b]):
                item["map"] = _rounded(batch.maps[b][j]) if bool(batch.map_valid[b][j]) else None
            if collector.layers and j in query_of:
                rows = collector.layers[-1].log_probs[b, :, query_of[j]].exp().mean(dim=0)
                item["attention"] = _rounded(rows.cpu())
        samples.append({"image": _png(batch.pixel_values[b]), "size": trainer.config.input_size,
                        "truth": truth, "predicted": predicted})
    return {"task": "detection", "epoch": trainer.epoch, "grid": list(trainer.grid), "samples": samples}

