"""The I-ViT trainer: a loop you can read in one sitting (nanoGPT's train.py is the model).

AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast on GPU. The loss is
L_task + align_weight · L_align (alignment.py). Each step and epoch is reported through
`progress(event)`, which the queue layer turns into job events; `should_stop()` is checked every
step (cooperative cancel). A checkpoint is written every `checkpoint_every` steps and at each
epoch end; `Trainer.run()` resumes from the newest one in the run folder.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F

from services.student.alignment import alignment_loss
from services.student.backbones import resolve_init
from services.student.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from services.student.data import DatasetSplits, ImageSet
from services.student.loader import MAP_COUNTS, BatchBuilder, Prefetcher, denormalise
from services.student.maps import MapSource
from services.student.model import IViTForImageClassification, build_student, freeze_original
from services.student.model_config import MODES, ModeName, interaction_mode
from services.student.preprocessing import PREPROCESSOR_FILE, normalisation_for
from shared.job_spec import JobSpec

log = logging.getLogger("lfi.student.trainer")
Event = dict[str, Any]


@dataclass(frozen=True)
class TrainConfig:
    """A job spec (model, student, ablation, init, the recipe: epochs, batch_size, lr, weight_decay, warmup_steps,
    align_rows/heads/layers/weight, kl_direction/smoothing, min_crop_mass, ...: their defaults live in `JobSpec`
    only) plus the trainer's own settings, which a job cannot set. Build it with `from_spec`."""

    spec: JobSpec
    grad_clip: float = 1.0
    augment: bool = True
    step_checkpoints: bool = True  # False: checkpoints at epoch ends only (short test and benchmark runs)
    max_steps: int | None = None  # stop early (tests, benchmarks)
    device: str = "auto"

    @classmethod
    def from_spec(cls, spec: JobSpec, **overrides: Any) -> TrainConfig:
        """The one way from a job spec to a training config. An override may name a spec field (validated as
        the spec is: a benchmark variant such as `ablation="no-gate"`) or one of the trainer's own."""
        spec_fields = {name: value for name, value in overrides.items() if name in JobSpec.model_fields}
        if spec_fields:
            spec = JobSpec.model_validate({**spec.model_dump(), **spec_fields})
        own = {name: value for name, value in overrides.items() if name not in spec_fields}
        return cls(spec=spec, **own)

    @property
    def mode(self) -> ModeName:
        return interaction_mode(self.spec.student, self.spec.ablation)

    @property
    def aligned(self) -> bool:
        return MODES[self.mode].aligned

    def as_dict(self) -> dict[str, Any]:
        """Plain values only: it is saved in checkpoints, which are loaded with `weights_only=True`."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        return {**self.spec.model_dump(mode="json"), **own}


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    global_step: int
    history: list[dict] = field(default_factory=list)  # one entry per finished epoch
    final: dict = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    def __init__(self, config: TrainConfig, data: DatasetSplits, run_dir: Path, *,
                 map_source: MapSource | None = None, progress: Callable[[Event], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.data = data
        self.run_dir = Path(run_dir)
        self.progress = progress or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = pick_device(config.device)
        spec = config.spec
        torch.manual_seed(spec.seed)
        random.seed(spec.seed)
        np.random.seed(spec.seed)
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
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = spec.epochs * self.steps_per_epoch
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=spec.lr, weight_decay=spec.weight_decay)
        warmup = spec.warmup_steps if spec.warmup_steps is not None else max(1, self.total_steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, self.total_steps))
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.history: list[dict] = []
        self._epoch_sums: dict[str, float] = {}

    # -- state -------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "history": self.history, "epoch_sums": self._epoch_sums, "config": self.config.as_dict()}

    def checkpoint(self) -> Path:
        preprocessor = self.normalisation.preprocessor_config(self.model.config.image_size)
        folder = save_checkpoint(self.run_dir, self.global_step, self.model, self._state(),
                                 extra_files={PREPROCESSOR_FILE: json.dumps(preprocessor, indent=1)})
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
        self.global_step = state["global_step"]
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.history = state["history"]
        self._epoch_sums = state["epoch_sums"]
        self.progress({"type": "resumed", "global_step": self.global_step, "epoch": self.epoch,
                       "step_in_epoch": self.step_in_epoch, "path": str(folder)})
        log.info("resumed from %s (epoch %d, step %d)", folder, self.epoch, self.step_in_epoch)
        return True

    # -- one step ----------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self, batch) -> dict[str, float]:
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
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
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

    def _write_samples(self) -> Path | None:
        try:
            pictures = self.sample_maps()
        except Exception:  # pictures are a nicety: never let them fail a run
            log.exception("could not draw sample maps")
            return None
        folder = self.run_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch-{self.epoch:04d}.json"
        path.write_text(json.dumps(pictures))
        return path

    # -- the loop ----------------------------------------------------------------------------------
    def _accumulate(self, step: dict[str, float], batch, waited: float, seconds: float) -> None:
        sums = self._epoch_sums
        for reason, count in batch.map_counts.items():
            sums[f"maps_{reason}"] = sums.get(f"maps_{reason}", 0) + count
        for name in ("task_loss", "align_loss", "correct", "seen"):
            sums[name] = sums.get(name, 0.0) + step[name] * (step["seen"] if name.endswith("loss") else 1)
        sums["wait_s"] = sums.get("wait_s", 0.0) + waited
        sums["time_s"] = sums.get("time_s", 0.0) + seconds
        sums["steps"] = sums.get("steps", 0) + 1
        for i, gate in enumerate(step["gates"]):
            if gate is not None:
                sums[f"gate{i}_agt"] = sums.get(f"gate{i}_agt", 0.0) + gate[0]
                sums[f"gate{i}_vfm"] = sums.get(f"gate{i}_vfm", 0.0) + gate[1]

    def _finish_epoch(self) -> dict:
        sums = self._epoch_sums
        seen = max(1.0, sums.get("seen", 0.0))
        steps = max(1, int(sums.get("steps", 0)))
        layers = len(self.model.interaction_layers)
        gates = [[sums[f"gate{i}_agt"] / steps, sums[f"gate{i}_vfm"] / steps] if f"gate{i}_agt" in sums else None
                 for i in range(layers)]
        record = {
            "epoch": self.epoch + 1,
            "task_loss": sums.get("task_loss", 0.0) / seen,
            "align_loss": sums.get("align_loss", 0.0) / seen,
            "train_top1": sums.get("correct", 0.0) / seen,
            "val_top1": self.evaluate(self.data.val),
            "heldout_top1": {name: self.evaluate(images) for name, images in self.data.heldout.items()},
            "gates": gates,
            "images_per_s": sums.get("seen", 0.0) / max(1e-9, sums.get("time_s", 0.0)),
            "map_wait_s": sums.get("wait_s", 0.0),
            "unreadable": len(self.train_batches.unreadable),
            # training images of this epoch that added no alignment term, by reason (docs/method.md)
            **{f"maps_{reason}": int(sums.get(f"maps_{reason}", 0)) for reason in MAP_COUNTS},
            "global_step": self.global_step,
        }
        return record

    def run(self) -> TrainResult:
        self.resume()
        while self.epoch < self.config.spec.epochs:
            if not self._train_epoch():
                return TrainResult("stopped", self.global_step, self.history)
            self._end_epoch()
        final = dict(self.history[-1]) if self.history else {}
        return TrainResult("completed", self.global_step, self.history, final)

    def _train_epoch(self) -> bool:
        """The rest of the current epoch; False when told to stop (cancel, lost lease) or at `max_steps`."""
        max_steps = self.config.max_steps
        prefetch = Prefetcher(self.train_batches, self.epoch, self.step_in_epoch)
        try:
            last = time.perf_counter()
            for batch, waited in prefetch:
                if self.should_stop() or (max_steps is not None and self.global_step >= max_steps):
                    return False
                if not len(batch.labels):
                    self.step_in_epoch += 1
                    continue
                step = self.train_step(batch)
                now = time.perf_counter()
                seconds, last = now - last, now
                self._after_step(step, batch, waited, seconds)
        finally:
            prefetch.close()
        return True

    def _after_step(self, step: dict[str, Any], batch, waited: float, seconds: float) -> None:
        self.global_step += 1
        self.step_in_epoch += 1
        self._accumulate(step, batch, waited, seconds)
        self.progress({"type": "step", "epoch": self.epoch + 1, "step": self.step_in_epoch,
                       "steps_per_epoch": self.steps_per_epoch, "global_step": self.global_step,
                       "total_steps": self.total_steps, "task_loss": step["task_loss"],
                       "align_loss": step["align_loss"], "lr": self.scheduler.get_last_lr()[0],
                       "images_per_s": step["seen"] / max(seconds, 1e-9), "map_wait_s": waited,
                       "skipped": batch.skipped})
        # the epoch end writes its own checkpoint just after the last step
        if self.config.step_checkpoints and self.global_step % self.config.spec.checkpoint_every == 0 \
                and self.step_in_epoch < self.steps_per_epoch:
            self.checkpoint()

    def _end_epoch(self) -> None:
        record = self._finish_epoch()
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_sums = {}
        # the epoch is in the checkpoint before it is announced: a resume never counts it twice
        self.checkpoint()
        self.progress({"type": "epoch", **record})
        samples = self._write_samples()
        if samples is not None:
            self.progress({"type": "samples", "epoch": self.epoch, "path": str(samples)})


def _png_base64(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
