"""Pretrain a ViT backbone on the synthetic shapes, so the paper's frozen setting can be run here.

The paper freezes a pretrained ViT and trains only the interaction queries, gates and head (§5). No
pretrained ViT can be downloaded on these machines, so this trains one (`builtin:vit-tiny-synth`,
shipped under services/student/pretrained/) on a task where shape and texture both matter and
neither is a shortcut: `shared.synth` images drawn with every background equally likely, labelled
with the 16 (shape, texture) pairs. The backbone must see both to score; which one a downstream
head leans on is then up to the downstream training, which is what the effect benchmark measures.

A pool of `images` distinct images is drawn first (in worker processes: one costs a few ms), then seen
`epochs` times, each time flipped or transposed at random; the stream (`data_seed`) is disjoint from the
downstream synthetic set's (seed 0) and the tiny teacher's (1000).
Every image and weight follows from `seed` and `data_seed`: on one machine two runs give the same
weights. The output is a plain transformers `ViTForImageClassification` folder (config.json,
model.safetensors, preprocessor_config.json), loadable as a job's `init`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import ViTForImageClassification

from services.student.loader import normalise
from services.student.model_config import MODEL_SIZES, student_config
from services.student.preprocessing import DEFAULT, PREPROCESSOR_FILE
from shared.synth import BACKGROUNDS, CLASSES, UNIFORM_CORRELATION, make_sample

LABELS = [f"{shape}/{texture}" for shape in CLASSES for texture in BACKGROUNDS]  # label = shape * 4 + texture


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0  # weights, batch order and flips
    data_seed: int = 2000  # images: disjoint from the student's synthetic set (0) and the teacher's (1000)
    model: str = "vit-tiny"
    images: int = 16_000  # distinct training images (drawing one costs ~2-3 ms: a pool, seen several times)
    epochs: int = 3  # passes over the pool, each image flipped/transposed at random (labels do not change)
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    eval_images: int = 1024
    eval_every: int = 100  # steps
    workers: int = 2  # processes drawing the images

    def __post_init__(self) -> None:
        if self.model not in MODEL_SIZES:
            raise ValueError(f"model must be one of {sorted(MODEL_SIZES)}, got {self.model!r}")
        for name in ("images", "epochs", "batch_size", "eval_images", "eval_every", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "data_seed", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.images / self.batch_size)

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class PretrainReport:
    out_dir: Path
    config: PretrainConfig
    seconds: float
    evaluation: dict = field(default_factory=dict)  # final top-1: 16-way, shape only, texture only
    curve: list[dict] = field(default_factory=list)  # (step, seconds, top-1s) at each evaluation
    drawing_seconds: float = 0.0  # of `seconds`, spent drawing the images


def labelled_batch(split: str, start: int, count: int, data_seed: int, image_size: int) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """Images start..start+count of a stream with uniform backgrounds, and their (shape, texture) labels."""
    pixels, labels = [], []
    for index in range(start, start + count):
        shape = index % len(CLASSES)
        sample = make_sample(split, shape, index // len(CLASSES), seed=data_seed, correlation=UNIFORM_CORRELATION,
                             image_size=image_size)
        pixels.append(sample.image)
        labels.append(shape * len(BACKGROUNDS) + BACKGROUNDS.index(sample.background))
    return np.stack(pixels), np.asarray(labels, dtype=np.int64)


def _draw_chunk(args: tuple[str, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    return labelled_batch(*args)


def draw_images(split: str, count: int, data_seed: int, image_size: int, workers: int = 1,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`labelled_batch` for many images, in `workers` processes (drawing is numpy under the GIL)."""
    chunk = 512
    jobs = [(split, start, min(chunk, count - start), data_seed, image_size) for start in range(0, count, chunk)]
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for part in pool.imap(_draw_chunk, jobs):
                parts.append(part)
                if progress is not None:
                    progress(len(part[1]))
    else:
        for job in jobs:
            parts.append(_draw_chunk(job))
            if progress is not None:
                progress(len(parts[-1][1]))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def dihedral(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each (S, S, 3) image flipped and/or transposed at random: shape class and texture stay what they were."""
    out = pixels.copy()
    flips = rng.integers(0, 2, size=(len(pixels), 3)).astype(bool)
    for i, (flip_x, flip_y, transpose) in enumerate(flips):
        image = out[i]
        image = image[:, ::-1] if flip_x else image
        image = image[::-1] if flip_y else image
        out[i] = image.transpose(1, 0, 2) if transpose else image
    return out


def _batches(config: PretrainConfig, pixels: np.ndarray, labels: np.ndarray) -> Iterator[tuple[torch.Tensor,
                                                                                                torch.Tensor]]:
    """Every epoch's batches: an order and flips that follow from (seed, epoch) alone."""
    for epoch in range(config.epochs):
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(labels))
        for start in range(0, len(order), config.batch_size):
            index = np.sort(order[start:start + config.batch_size])
            yield normalise(dihedral(pixels[index], rng), DEFAULT), torch.from_numpy(labels[index])


@torch.no_grad()
def evaluate(model: ViTForImageClassification, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 on the 16 pairs, and on shape and texture alone (the pair's parts of the prediction)."""
    model.eval()
    predicted = torch.cat([model(pixel_values=chunk).logits.argmax(-1) for chunk in pixels.split(256)])
    model.train()
    textures = len(BACKGROUNDS)
    return {"pair": (predicted == labels).float().mean().item(),
            "shape": (predicted // textures == labels // textures).float().mean().item(),
            "texture": (predicted % textures == labels % textures).float().mean().item()}


def build_backbone(config: PretrainConfig) -> ViTForImageClassification:
    torch.manual_seed(config.seed)
    vit_config = student_config(config.model, len(LABELS), "off")
    del vit_config.interaction  # a plain ViT checkpoint: the student adds its own interaction settings
    vit_config.id2label = dict(enumerate(LABELS))
    vit_config.label2id = {label: i for i, label in enumerate(LABELS)}
    return ViTForImageClassification(vit_config)


def pretrain_backbone(out_dir: Path, config: PretrainConfig = PretrainConfig(),
                      on_step: Callable[[int, float, dict | None], None] | None = None,
                      on_drawn: Callable[[int], None] | None = None) -> PretrainReport:
    """Draw the images, train the backbone and write it to `out_dir`.

    `on_drawn(n)` as images are drawn; `on_step(step, loss, evaluation or None)` after each step.
    """
    began = time.perf_counter()
    model = build_backbone(config)
    size = model.config.image_size
    pixels, labels = draw_images("train", config.images, config.data_seed, size, config.workers, on_drawn)
    val_pixels, val_labels = draw_images("val", config.eval_images, config.data_seed, size, config.workers)
    val_x, val_y = normalise(val_pixels, DEFAULT), torch.from_numpy(val_labels)
    drawn = time.perf_counter() - began
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup, total = max(1, config.warmup_steps), config.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, total - warmup))))))
    curve: list[dict] = []
    model.train()
    for step, (batch, targets) in enumerate(_batches(config, pixels, labels), start=1):
        loss = F.cross_entropy(model(pixel_values=batch).logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        scores = None
        if step % config.eval_every == 0 or step == total:
            scores = evaluate(model, val_x, val_y)
            curve.append({"step": step, "seconds": round(time.perf_counter() - began, 1), **scores})
        if on_step is not None:
            on_step(step, loss.item(), scores)
    report = PretrainReport(Path(out_dir), config, time.perf_counter() - began, curve[-1], curve,
                            drawing_seconds=drawn)
    save_backbone(model, report)
    return report


def save_backbone(model: ViTForImageClassification, report: PretrainReport) -> None:
    out = report.out_dir
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    preprocessor = DEFAULT.preprocessor_config(model.config.image_size)
    (out / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=1) + "\n")
    record = {"config": asdict(report.config), "seconds": round(report.seconds, 1),
              "drawing_seconds": round(report.drawing_seconds, 1),
              "evaluation": report.evaluation, "curve": report.curve, "torch": torch.__version__}
    (out / "lfi_pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
