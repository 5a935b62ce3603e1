"""The detection trainer (DETR / I-DETR): the I-ViT trainer's loop, events and checkpoints, for boxes.

L = the DETR loss transformers computes (focal or cross-entropy classes, L1 and GIoU boxes, every decoder
layer) + align_weight · the instance alignment (alignment.py) for I-DETR. AdamW, warmup then cosine, gradient
clipping at 0.1 (DETR's). Each epoch ends with COCO mAP on the validation split and every held-out split,
a checkpoint, and a few pictures (boxes over the image beside the instance maps). The events are the I-ViT
trainer's (`step`, `epoch`, `checkpoint`, `resumed`, `samples`), so the job layer runs either unchanged.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.student.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from services.student.detection.alignment import instance_alignment_loss, match, matcher_for
from services.student.detection.data import DetectionBatch, DetectionBatchBuilder
from services.student.detection.evaluate import coco_map, predict
from services.student.detection.model import DETECTOR_SIZES, InteractionCollector, build_detector
from services.student.detection.pictures import write_samples
from services.student.loader import Prefetcher
from services.student.maps import MapSource
from services.student.model_config import ABLATION_MODES, MODES, ModeName
from services.student.trainer import TrainResult, pick_device, warmup_cosine
from shared.coco import CocoDataset, CocoSplit
from shared.job_spec import JobSpec

log = logging.getLogger("lfi.student.detection.trainer")
Event = dict[str, Any]


@dataclass(frozen=True)
class DetectionConfig:
    """A detection job spec plus the trainer's own settings, which a job cannot set."""

    spec: JobSpec
    image_size: int | None = None  # default: 64 for the tiny detectors, 512 for the R50 ones
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    augment: bool = True
    step_checkpoints: bool = True
    max_steps: int | None = None
    device: str = "auto"

    @classmethod
    def from_spec(cls, spec: JobSpec, **overrides: Any) -> DetectionConfig:
        spec_fields = {name: value for name, value in overrides.items() if name in JobSpec.model_fields}
        if spec_fields:
            spec = JobSpec.model_validate({**spec.model_dump(), **spec_fields})
        return cls(spec=spec, **{k: v for k, v in overrides.items() if k not in spec_fields})

    @property
    def mode(self) -> ModeName:
        return "off" if self.spec.student == "detr" else ABLATION_MODES[self.spec.ablation]

    @property
    def aligned(self) -> bool:
        return MODES[self.mode].aligned

    @property
    def input_size(self) -> int:
        return self.image_size or (64 if DETECTOR_SIZES[self.spec.model].tiny_backbone else 512)

    def as_dict(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        return {**self.spec.model_dump(mode="json"), **own}


def memory_grid(model: torch.nn.Module, size: int) -> tuple[int, int]:
    """The encoder memory's (h, w) for a size x size input: the backbone's last feature map."""
    with torch.no_grad():
        features = model.model.backbone(torch.zeros(1, 3, size, size), torch.ones(1, size, size, dtype=torch.long))
    height, width = features[-1][0].shape[-2:]
    return int(height), int(width)


class DetectionTrainer:
    def __init__(self, config: DetectionConfig, data: CocoDataset, run_dir: Path, *,
                 map_source: MapSource | None = None, progress: Callable[[Event], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.config, self.data, self.run_dir = config, data, Path(run_dir)
        self.progress = progress or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = pick_device(config.device)
        spec = config.spec
        torch.manual_seed(spec.seed)
        random.seed(spec.seed)
        np.random.seed(spec.seed)
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
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = spec.epochs * self.steps_per_epoch
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=config.weight_decay)
        warmup = max(1, self.total_steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, self.total_steps))
        self.global_step = self.epoch = self.step_in_epoch = 0
        self.history: list[dict] = []
        self._epoch_sums: dict[str, float] = {}

    def batches(self, split: CocoSplit, *, augment: bool, map_source: MapSource | None = None,
                batch_size: int | None = None) -> DetectionBatchBuilder:
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        return DetectionBatchBuilder(split, category_index=index, category_names=self.data.category_names,
                                     image_size=self.config.input_size, grid=self.grid,
                                     batch_size=batch_size or self.config.spec.batch_size, seed=self.config.spec.seed,
                                     augment=augment, map_source=map_source)

    # -- state -------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "history": self.history, "epoch_sums": self._epoch_sums, "config": self.config.as_dict()}

    def checkpoint(self) -> Path:
        folder = save_checkpoint(self.run_dir, self.global_step, self.model, self._state())
        self.progress({"type": "checkpoint", "global_step": self.global_step, "epoch": self.epoch,
                       "step_in_epoch": self.step_in_epoch, "path": str(folder)})
        return folder

    def resume(self) -> bool:
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            return False
        state = load_checkpoint(folder, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for name in ("global_step", "epoch", "step_in_epoch", "history"):
            setattr(self, name, state[name])
        self._epoch_sums = state["epoch_sums"]
        self.progress({"type": "resumed", "global_step": self.global_step, "epoch": self.epoch,
                       "step_in_epoch": self.step_in_epoch, "path": str(folder)})
        return True

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
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        gates = [r.gates.tolist() if r.gates is not None else None for r in collector.layers]
        return {"task_loss": out.loss.item(), "align_loss": align.item(), "seen": len(batch.images), "gates": gates}

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, split: CocoSplit | None) -> dict[str, float | None] | None:
        if split is None or not len(split):
            return None
        results = predict(self.model, self.batches(split, augment=False, batch_size=32), self.device,
                          self.category_ids)
        return coco_map(split, results)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.resume()
        while self.epoch < self.config.spec.epochs:
            if not self._train_epoch():
                return TrainResult("stopped", self.global_step, self.history)
            self._end_epoch()
        final = dict(self.history[-1]) if self.history else {}
        return TrainResult("completed", self.global_step, self.history, final)

    def _train_epoch(self) -> bool:
        max_steps = self.config.max_steps
        prefetch = Prefetcher(self.train_batches, self.epoch, self.step_in_epoch)
        try:
            last = time.perf_counter()
            for batch, waited in prefetch:
                if self.should_stop() or (max_steps is not None and self.global_step >= max_steps):
                    return False
                if not batch.images:
                    self.step_in_epoch += 1
                    continue
                step = self.train_step(batch)
                now = time.perf_counter()
                seconds, last = now - last, now
                self._after_step(step, batch, waited, seconds)
        finally:
            prefetch.close()
        return True

    def _after_step(self, step: dict[str, Any], batch: DetectionBatch, waited: float, seconds: float) -> None:
        self.global_step += 1
        self.step_in_epoch += 1
        sums = self._epoch_sums
        for name in ("task_loss", "align_loss"):
            sums[name] = sums.get(name, 0.0) + step[name] * step["seen"]
        for name, value in (("seen", step["seen"]), ("wait_s", waited), ("time_s", seconds), ("steps", 1)):
            sums[name] = sums.get(name, 0.0) + value
        for i, gate in enumerate(step["gates"]):
            if gate is not None:
                sums[f"gate{i}_agt"] = sums.get(f"gate{i}_agt", 0.0) + gate[0]
                sums[f"gate{i}_vfm"] = sums.get(f"gate{i}_vfm", 0.0) + gate[1]
        self.progress({"type": "step", "epoch": self.epoch + 1, "step": self.step_in_epoch,
                       "steps_per_epoch": self.steps_per_epoch, "global_step": self.global_step,
                       "total_steps": self.total_steps, "task_loss": step["task_loss"],
                       "align_loss": step["align_loss"], "lr": self.scheduler.get_last_lr()[0],
                       "images_per_s": step["seen"] / max(seconds, 1e-9), "map_wait_s": waited,
                       "skipped": batch.skipped})
        if self.config.step_checkpoints and self.global_step % self.config.spec.checkpoint_every == 0 \
                and self.step_in_epoch < self.steps_per_epoch:
            self.checkpoint()

    def _finish_epoch(self) -> dict[str, Any]:
        sums = self._epoch_sums
        seen, steps = max(1.0, sums.get("seen", 0.0)), max(1.0, sums.get("steps", 0.0))
        layers = self.model.config.decoder_layers
        gates = [[sums[f"gate{i}_agt"] / steps, sums[f"gate{i}_vfm"] / steps] if f"gate{i}_agt" in sums else None
                 for i in range(layers)]
        return {"epoch": self.epoch + 1, "task": "detection",
                "task_loss": sums.get("task_loss", 0.0) / seen, "align_loss": sums.get("align_loss", 0.0) / seen,
                "val_map": self.evaluate(self.data.val),
                "heldout_map": {name: self.evaluate(split) for name, split in self.data.heldout.items()},
                "gates": gates, "images_per_s": sums.get("seen", 0.0) / max(1e-9, sums.get("time_s", 0.0)),
                "map_wait_s": sums.get("wait_s", 0.0), "unreadable": len(self.train_batches.unreadable),
                "global_step": self.global_step}

    def _end_epoch(self) -> None:
        record = self._finish_epoch()
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_sums = {}
        self.checkpoint()  # the epoch is in the checkpoint before it is announced
        self.progress({"type": "epoch", **record})
        try:
            path = write_samples(self)
        except Exception:  # pictures are a nicety: never let them fail a run
            log.exception("could not draw sample detections")
            return
        self.progress({"type": "samples", "epoch": self.epoch, "path": str(path)})
