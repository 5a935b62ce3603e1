"""The detection trainer (DETR / I-DETR): the I-ViT trainer's loop, events and checkpoints, for boxes.

L = the DETR loss transformers computes (focal or cross-entropy classes, L1 and GIoU boxes, every decoder
layer) + align_weight · the instance alignment (alignment.py) for I-DETR. AdamW, warmup then cosine, gradient
clipping at 0.1 (DETR's). Each epoch ends with COCO mAP on the validation split and every held-out split,
a checkpoint, and a few pictures (boxes over the image beside the instance maps). The events are the I-ViT
trainer's (`step`, `epoch`, `checkpoint`, `resumed`, `samples`), so the job layer runs either unchanged: the
loop, its events and checkpoints are training_loop.py's; this file is the detection task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.student.detection.alignment import instance_alignment_loss, match, matcher_for
from services.student.detection.data import DetectionBatch, DetectionBatchBuilder
from services.student.detection.evaluate import coco_map, predict
from services.student.detection.model import DETECTOR_SIZES, InteractionCollector, build_detector
from services.student.detection.pictures import sample_detections
from services.student.maps import MapSource
from services.student.model_config import ABLATION_MODES, ModeName
from services.student.training_loop import Event, SpecConfig, TrainingLoop
from shared.coco import CocoDataset, CocoSplit
from shared.job_spec import JobSpec


@dataclass(frozen=True)
class DetectionConfig(SpecConfig):
    """A detection job spec plus the trainer's own settings, which a job cannot set."""

    spec: JobSpec
    image_size: int | None = None  # default: 64 for the tiny detectors, 512 for the R50 ones
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    augment: bool = True
    step_checkpoints: bool = True
    max_steps: int | None = None
    device: str = "auto"

    @property
    def mode(self) -> ModeName:
        return "off" if self.spec.student == "detr" else ABLATION_MODES[self.spec.ablation]

    @property
    def input_size(self) -> int:
        return self.image_size or (64 if DETECTOR_SIZES[self.spec.model].tiny_backbone else 512)


def memory_grid(model: torch.nn.Module, size: int) -> tuple[int, int]:
    """The encoder memory's (h, w) for a size x size input: the backbone's last feature map."""
    with torch.no_grad():
        features = model.model.backbone(torch.zeros(1, 3, size, size), torch.ones(1, size, size, dtype=torch.long))
    height, width = features[-1][0].shape[-2:]
    return int(height), int(width)


class DetectionTrainer(TrainingLoop):
    log = logging.getLogger("lfi.student.detection.trainer")
    config: DetectionConfig

    def __init__(self, config: DetectionConfig, data: CocoDataset, run_dir: Path, *,
                 map_source: MapSource | None = None, progress: Callable[[Event], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        super().__init__(config, run_dir, progress, should_stop)  # seeds every generator, picks the device
        self.data = data
        spec = config.spec
        self.category_ids = [int(c["id"]) for c in data.categories]
        self.model = build_detector(spec.model, len(self.category_ids), config.mode, init=spec.init)
        decoder_layers = self.model.config.decoder_layers
        if spec.align_layers and max(spec.align_layers) >= decoder_layers:
            raise ValueError(f"align_layers {spec.align_layers} out of range: {spec.model} has {decoder_layers} "
                             "decoder layers")
        if config.aligned and map_source is None:
            raise ValueError(f"{spec.student}/{spec.ablation} aligns with the teacher: give it a map source")
        self.grid = memory_grid(self.model, config.input_size)
        self.model.to(self.device)
        self.matcher = matcher_for(self.model.config)
        self.map_source = map_source if config.aligned else None
        self.train_batches = self.batches(data.train, augment=config.augment, map_source=self.map_source)
        # the warmup is always 5 % of the run here: `warmup_steps` is not a detection setting
        self._start_schedule(lr=spec.lr, weight_decay=config.weight_decay, warmup_steps=None)

    def batches(self, split: CocoSplit, *, augment: bool, map_source: MapSource | None = None,
                batch_size: int | None = None) -> DetectionBatchBuilder:
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        return DetectionBatchBuilder(split, category_index=index, category_names=self.data.category_names,
                                     image_size=self.config.input_size, grid=self.grid,
                                     batch_size=batch_size or self.config.spec.batch_size, seed=self.config.spec.seed,
                                     augment=augment, map_source=map_source)

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self, batch: DetectionBatch) -> dict[str, Any]:
        spec = self.config.spec
        self.model.train()
        labels = [{k: v.to(self.device) for k, v in target.items()} for target in batch.labels]
        collector = InteractionCollector()
        out = self.model(pixel_values=batch.pixel_values.to(self.device), pixel_mask=batch.pixel_mask.to(self.device),
                         labels=labels, interactions=collector)
        align = torch.zeros((), device=self.device)
        if self.config.aligned and batch.maps is not None:
            indices = match(self.matcher, out.logits, out.pred_boxes, labels)
            align = instance_alignment_loss(collector.layers, indices, batch.maps, batch.map_valid,
                                            layers=spec.align_layers)
        loss = out.loss + spec.align_weight * align
        self._optimise(loss)
        gates = [r.gates.tolist() if r.gates is not None else None for r in collector.layers]
        return {"task_loss": out.loss.item(), "align_loss": align.item(), "seen": len(batch.images), "gates": gates}

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, split: CocoSplit | None) -> dict[str, float | None] | None:
        if split is None or not len(split):
            return None
        results = predict(self.model, self.batches(split, augment=False, batch_size=32), self.device,
                          self.category_ids)
        return coco_map(split, results)

    # -- the epoch record ------------------------------------------------------------------------------
    def _empty(self, batch: DetectionBatch) -> bool:
        return not batch.images

    def _gate_layers(self) -> int:
        return self.model.config.decoder_layers

    def _epoch_scores(self, losses: dict[str, float], seen: float) -> dict[str, Any]:
        return {"task": "detection", **losses, "val_map": self.evaluate(self.data.val),
                "heldout_map": {name: self.evaluate(split) for name, split in self.data.heldout.items()}}

    def _pictures(self) -> dict[str, Any]:
        return sample_detections(self)
