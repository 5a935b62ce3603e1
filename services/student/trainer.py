"""The I-ViT trainer: a loop you can read in one sitting (nanoGPT's train.py is the model).

AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast on GPU. The loss is
L_task + align_weight · L_align (alignment.py). Each step and epoch is reported through
`progress(event)`, which the queue layer turns into job events; `should_stop()` is checked every
step (cooperative cancel). A checkpoint is written every `checkpoint_every` steps and at each
epoch end; `Trainer.run()` resumes from the newest one in the run folder. The loop, its events and
checkpoints are training_loop.py's, shared with the detection trainer; this file is the classification task.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from services.student.alignment import alignment_loss
from services.student.backbones import resolve_init
from services.student.data import DatasetSplits, ImageSet
from services.student.loader import MAP_COUNTS, Batch, BatchBuilder, denormalise
from services.student.maps import MapSource
from services.student.model import IViTForImageClassification, build_student, freeze_original
from services.student.model_config import ModeName, interaction_mode
from services.student.preprocessing import PREPROCESSOR_FILE, normalisation_for
from services.student.training_loop import Event, SpecConfig, TrainingLoop, TrainResult
from shared.job_spec import JobSpec

__all__ = ["TrainConfig", "TrainResult", "Trainer"]


@dataclass(frozen=True)
class TrainConfig(SpecConfig):
    """A job spec (model, student, ablation, init, the recipe: epochs, batch_size, lr, weight_decay, warmup_steps,
    align_rows/heads/layers/weight, kl_direction/smoothing, min_crop_mass, ...: their defaults live in `JobSpec`
    only) plus the trainer's own settings, which a job cannot set. Build it with `from_spec`."""

    spec: JobSpec
    grad_clip: float = 1.0
    augment: bool = True
    step_checkpoints: bool = True  # False: checkpoints at epoch ends only (short test and benchmark runs)
    max_steps: int | None = None  # stop early (tests, benchmarks)
    device: str = "auto"

    @property
    def mode(self) -> ModeName:
        return interaction_mode(self.spec.student, self.spec.ablation)


class Trainer(TrainingLoop):
    config: TrainConfig

    def __init__(self, config: TrainConfig, data: DatasetSplits, run_dir: Path, *,
                 map_source: MapSource | None = None, progress: Callable[[Event], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        super().__init__(config, run_dir, progress, should_stop)  # seeds every generator, picks the device
        self.data = data
        spec = config.spec
        init = resolve_init(spec.init)  # builtin:<name> -> the shipped backbone's folder
        self.model: IViTForImageClassification = build_student(
            spec.model, len(data.classes), config.mode, init=init, align_rows=spec.align_rows)
        if init != "scratch" and spec.freeze:
            freeze_original(self.model)
        self.normalisation = normalisation_for(init)  # what the init checkpoint's layers were trained on
        layers = self.model.config.num_hidden_layers
        if spec.align_layers and max(spec.align_layers) >= layers:
            raise ValueError(f"align_layers {spec.align_layers} out of range: {spec.model} has {layers} layers")
        self.model.to(self.device)
        size = self.model.config.image_size
        grid = (size // self.model.config.patch_size,) * 2
        if config.aligned and map_source is None:
            raise ValueError(f"{spec.student}/{spec.ablation} aligns with the teacher: give it a map source")
        self.train_batches = BatchBuilder(data.train, image_size=size, grid=grid, batch_size=spec.batch_size,
                                          seed=spec.seed, augment=config.augment,
                                          map_source=map_source if config.aligned else None,
                                          label_word=data.label_word, normalisation=self.normalisation,
                                          min_crop_mass=spec.min_crop_mass)
        self._start_schedule(lr=spec.lr, weight_decay=spec.weight_decay, warmup_steps=spec.warmup_steps)

    def _checkpoint_files(self) -> dict[str, str]:
        preprocessor = self.normalisation.preprocessor_config(self.model.config.image_size)
        return {PREPROCESSOR_FILE: json.dumps(preprocessor, indent=1)}

    # -- one step ----------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self, batch: Batch) -> dict[str, Any]:
        config, spec = self.config, self.config.spec
        self.model.train()
        pixels = batch.pixel_values.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        with self._autocast():
            out = self.model.forward_interactions(pixels)
            task = F.cross_entropy(out.logits.float(), labels)
            align = torch.zeros((), device=self.device)
            if config.aligned and batch.maps is not None:
                rows = out.alignment if not spec.align_layers else \
                    [out.alignment[i] for i in sorted(set(spec.align_layers))]
                align = alignment_loss(rows, batch.maps.to(self.device), batch.map_valid.to(self.device),
                                       direction=spec.kl_direction,
                                       heads="each" if spec.align_rows == "each" else spec.align_heads,
                                       smoothing=spec.kl_smoothing)
            loss = task + spec.align_weight * align
        self._optimise(loss)
        correct = (out.logits.argmax(dim=-1) == labels).sum().item()
        gates = [g.tolist() if g is not None else None for g in out.gates]
        return {"task_loss": task.item(), "align_loss": align.item(), "correct": correct, "seen": len(labels),
                "gates": gates}

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, images: ImageSet, batch_size: int = 128) -> float | None:
        if not len(images):
            return None
        self.model.eval()
        size = self.model.config.image_size
        builder = BatchBuilder(images, image_size=size, grid=(1, 1), batch_size=batch_size, seed=0, augment=False,
                               normalisation=self.normalisation)
        correct = seen = 0
        for step in range(len(builder)):
            batch = builder.build(0, step)
            with self._autocast():
                logits = self.model(pixel_values=batch.pixel_values.to(self.device)).logits
            correct += (logits.argmax(dim=-1).cpu() == batch.labels).sum().item()
            seen += len(batch.labels)
        return correct / seen if seen else None

    # -- pictures ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_maps(self, count: int = 4) -> dict[str, Any]:
        """C_VLM, C_AGT and C_VFM per layer for a few fixed validation images (the paper's Figure 5)."""
        images = self.data.val if len(self.data.val) else self.data.train
        subset = ImageSet(images.name, images.samples[:: max(1, len(images) // count)][:count])
        size = self.model.config.image_size
        grid = self.train_batches.grid
        builder = BatchBuilder(subset, image_size=size, grid=grid, batch_size=count, seed=0, augment=False,
                               map_source=self.train_batches.map_source, label_word=self.data.label_word,
                               normalisation=self.normalisation)
        batch = builder.build(0, 0) if len(subset) else None
        if batch is None or not len(batch.labels):
            return {"grid": list(grid), "samples": []}
        self.model.eval()
        out = self.model.forward_interactions(batch.pixel_values.to(self.device), cls_rows=True)
        logits, rows = out.logits, out.cls_rows
        pixels = denormalise(batch.pixel_values, self.normalisation)
        samples = []
        for i in range(len(batch.labels)):
            has_map = batch.maps is not None and bool(batch.map_valid[i])
            samples.append({
                "label": self.data.classes[int(batch.labels[i])],
                "predicted": self.data.classes[int(logits[i].argmax())],
                "image": _png_base64(pixels[i]),
                "vlm": [round(v, 5) for v in batch.maps[i].tolist()] if has_map else None,
                "vfm": [[round(v, 5) for v in layer["vfm"][i].tolist()] for layer in rows],
                "agt": [[round(v, 5) for v in layer["agt"][i].tolist()] for layer in rows]
                if all("agt" in layer for layer in rows) else None,
            })
        return {"epoch": self.epoch, "grid": list(grid), "samples": samples}

    def _pictures(self) -> dict[str, Any]:
        return self.sample_maps()

    # -- the epoch record ------------------------------------------------------------------------------
    def _empty(self, batch: Batch) -> bool:
        return not len(batch.labels)

    def _accumulate(self, step: dict[str, Any], batch: Batch, waited: float, seconds: float) -> None:
        super()._accumulate(step, batch, waited, seconds)
        sums = self._epoch_sums
        sums["correct"] = sums.get("correct", 0.0) + step["correct"]
        for reason, count in batch.map_counts.items():
            sums[f"maps_{reason}"] = sums.get(f"maps_{reason}", 0) + count

    def _gate_layers(self) -> int:
        return len(self.model.interaction_layers)

    def _epoch_scores(self, losses: dict[str, float], seen: float) -> dict[str, Any]:
        return {**losses, "train_top1": self._epoch_sums.get("correct", 0.0) / seen,
                "val_top1": self.evaluate(self.data.val),
                "heldout_top1": {name: self.evaluate(images) for name, images in self.data.heldout.items()}}

    def _epoch_counts(self) -> dict[str, Any]:
        # training images of this epoch that added no alignment term, by reason (docs/method.md)
        return {f"maps_{reason}": int(self._epoch_sums.get(f"maps_{reason}", 0)) for reason in MAP_COUNTS}


def _png_base64(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
