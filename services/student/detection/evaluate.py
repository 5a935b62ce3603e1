"""COCO mAP of a detection student, by pycocotools' COCOeval (the reference evaluator).

Predictions follow transformers' post-processing: Conditional DETR scores every (query, class) pair with a
sigmoid and keeps the best 100 pairs; DETR takes each query's softmax over the real classes (no-object
dropped) and its best class. Boxes go back to the original image's pixels as COCO's [x, y, w, h].
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import numpy as np
import torch

from services.student.detection.data import DetectionBatchBuilder
from shared.coco import CocoSplit

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]
MAX_DETECTIONS = 100


def detections(logits: torch.Tensor, pred_boxes: torch.Tensor, sigmoid: bool,
               top_k: int = MAX_DETECTIONS) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image (scores, class indices, boxes as normalised cx, cy, w, h), best first."""
    out = []
    for image_logits, boxes in zip(logits.float(), pred_boxes.float(), strict=True):
        if sigmoid:
            scores = image_logits.sigmoid().flatten()
            k = min(top_k, scores.numel())
            best, flat = scores.topk(k)
            queries, classes = flat // image_logits.shape[-1], flat % image_logits.shape[-1]
        else:
            best, classes = image_logits.softmax(dim=-1)[:, :-1].max(dim=-1)
            order = best.argsort(descending=True)[:top_k]
            best, classes, queries = best[order], classes[order], order
        out.append((best.cpu().numpy(), classes.cpu().numpy(), boxes[queries].cpu().numpy()))
    return out


def to_coco_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised (cx, cy, w, h) -> [x, y, w, h] in pixels, clipped to the image."""
    cx, cy, w, h = boxes.T
    x0 = np.clip((cx - w / 2) * width, 0, width)
    y0 = np.clip((cy - h / 2) * height, 0, height)
    x1 = np.clip((cx + w / 2) * width, 0, width)
    y1 = np.clip((cy + h / 2) * height, 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


@torch.no_grad()
def predict(model: torch.nn.Module, builder: DetectionBatchBuilder, device: torch.device,
            category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO result records for every readable image of the builder's split."""
    model.eval()
    sigmoid = model.config.model_type == "conditional_detr"
    results = []
    for step in range(len(builder)):
        batch = builder.build(0, step)
        if not batch.images:
            continue
        out = model(pixel_values=batch.pixel_values.to(device), pixel_mask=batch.pixel_mask.to(device))
        for image, (scores, classes, boxes) in zip(batch.images, detections(out.logits, out.pred_boxes, sigmoid),
                                                   strict=True):
            for score, label, box in zip(scores, classes, to_coco_boxes(boxes, image.width, image.height), strict=True):
                results.append({"image_id": image.image_id, "category_id": category_ids[int(label)],
                                "bbox": [round(float(v), 2) for v in box], "score": round(float(score), 5)})
    return results


def coco_map(split: CocoSplit, results: list[dict[str, Any]]) -> dict[str, float | None]:
    """AP, AP50, AP75, APs, APm, APl (0..1; None where the split has no object of that size)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = json.loads(split.annotation_file.read_text())
        for item in truth.dataset.get("annotations", []):  # converted sets (VOC) may omit what COCOeval reads
            item.setdefault("iscrowd", 0)
            item.setdefault("area", float(item["bbox"][2] * item["bbox"][3]))
        truth.createIndex()
        if not results:
            return dict.fromkeys(METRICS, 0.0)
        found = truth.loadRes(results)
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.params.imgIds = sorted({image.image_id for image in split.images})
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: (None if value < 0 else round(float(value), 5)) for name, value in zip(METRICS, evaluation.stats,
                                                                                          strict=False)}
