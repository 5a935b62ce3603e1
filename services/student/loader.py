"""Batches of (image, label, C_VLM on the student's grid), built ahead of the training step.

Everything random about a sample (its crop, its flip) is drawn from a generator seeded by
(seed, epoch, dataset index), and the epoch's order from (seed, epoch). A batch is therefore a
pure function of where training is, which is what makes resume exact. Images that cannot be
decoded are dropped from their batch and counted, never fatal.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.student.data import ImageSet
from services.student.maps import MapRequest, MapSource
from services.student.preprocessing import DEFAULT, Normalisation
from services.student.transforms import View, apply_to_image, apply_to_map, full_view, random_resized_view
from shared.errors import LfiError
from shared.images import decode_image

log = logging.getLogger("lfi.student.loader")
MAP_COUNTS = ("missing", "degenerate", "weak_crop")  # why an image of a batch has no alignment target


@dataclass
class Batch:
    pixel_values: torch.Tensor  # (B, 3, S, S)
    labels: torch.Tensor  # (B,)
    maps: torch.Tensor | None  # (B, grid_h * grid_w), rows sum to 1 where valid
    map_valid: torch.Tensor | None  # (B,) bool
    step: int
    skipped: int  # unreadable images dropped from this batch
    # images without a target, by reason: no map, the teacher flagged it degenerate, the crop kept too little
    map_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MAP_COUNTS, 0))


def normalise(pixels: np.ndarray, normalisation: Normalisation) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float, per channel (x / 255 - mean) / std."""
    mean = torch.tensor(normalisation.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std).view(1, 3, 1, 1)
    return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def denormalise(pixel_values: torch.Tensor, normalisation: Normalisation) -> np.ndarray:
    """The inverse of `normalise`, as (B, S, S, 3) uint8 (for pictures)."""
    mean = torch.tensor(normalisation.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalisation.std).view(1, 3, 1, 1)
    return ((pixel_values * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(size)


def steps_per_epoch(size: int, batch_size: int) -> int:
    return math.ceil(size / batch_size)


def decode_or_skip(path: Path, rel: str, unreadable: set[str]) -> Image.Image | None:
    """The decoded image, or None when it cannot be read: `rel` joins `unreadable`, warned about once."""
    try:
        return decode_image(path.read_bytes())
    except (LfiError, OSError) as exc:
        if rel not in unreadable:
            unreadable.add(rel)
            log.warning("skipping unreadable image %s: %s", rel, exc)
        return None


class BuilderSettings:
    """What every batch builder (this one, the detection one) keeps: input size, map grid, batch size, seed,
    augmentation, map source, and the images it found unreadable."""

    def __init__(self, *, image_size: int, grid: tuple[int, int], batch_size: int, seed: int, augment: bool,
                 map_source: MapSource | None) -> None:
        self.image_size = image_size
        self.grid = grid
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.map_source = map_source
        self.unreadable: set[str] = set()


class BatchBuilder(BuilderSettings):
    def __init__(self, images: ImageSet, *, image_size: int, grid: tuple[int, int], batch_size: int, seed: int,
                 augment: bool, map_source: MapSource | None = None,
                 label_word: Callable[[int], str] = str, normalisation: Normalisation = DEFAULT,
                 min_crop_mass: float = 0.0) -> None:
        super().__init__(image_size=image_size, grid=grid, batch_size=batch_size, seed=seed, augment=augment,
                         map_source=map_source)
        self.images = images
        self.label_word = label_word
        self.normalisation = normalisation
        self.min_crop_mass = min_crop_mass

    def __len__(self) -> int:
        return steps_per_epoch(len(self.images), self.batch_size)

    def _decode(self, index: int) -> Image.Image | None:
        sample = self.images.samples[index]
        return decode_or_skip(sample.path, sample.rel, self.unreadable)

    def build(self, epoch: int, step: int) -> Batch:
        order = epoch_order(len(self.images), self.seed, epoch)
        indices = order[step * self.batch_size : (step + 1) * self.batch_size]
        kept, decoded = [], []
        for index in indices:
            image = self._decode(int(index))
            if image is not None:
                kept.append(int(index))
                decoded.append(image)
        views = []
        for index, image in zip(kept, decoded, strict=True):
            rng = np.random.default_rng([self.seed, epoch, index])
            views.append(random_resized_view(rng, *image.size) if self.augment else full_view(*image.size))
        pixels = np.stack([apply_to_image(im, v, self.image_size) for im, v in zip(decoded, views, strict=True)]) \
            if decoded else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        pixel_values = normalise(pixels, self.normalisation)
        labels = torch.tensor([self.images.samples[i].label for i in kept], dtype=torch.long)
        batch = Batch(pixel_values, labels, None, None, step, len(indices) - len(kept))
        if self.map_source is not None:
            self._add_maps(batch, kept, decoded, views)
        return batch

    def _add_maps(self, batch: Batch, kept: list[int], decoded: list[Image.Image], views: list[View]) -> None:
        """C_VLM per image on the student's grid; images without a usable target get a zero row, counted."""
        requests = [MapRequest(self.images.samples[i], im, self.label_word(self.images.samples[i].label))
                    for i, im in zip(kept, decoded, strict=True)]
        raw = self.map_source.fetch(requests) if requests else []
        rows = np.zeros((len(kept), self.grid[0] * self.grid[1]), np.float32)
        for row, values, view, image in zip(rows, raw, views, decoded, strict=True):
            if values is None:
                batch.map_counts["missing"] += 1
            elif not values.sum() > 0:  # a map source's all-zero map: the teacher flagged it degenerate
                batch.map_counts["degenerate"] += 1
            else:
                row[:] = apply_to_map(values, view, image.size, self.grid,
                                      min_kept_mass=self.min_crop_mass).reshape(-1)
                batch.map_counts["weak_crop"] += int(not row.sum() > 0)
        batch.maps = torch.from_numpy(rows)
        batch.map_valid = batch.maps.sum(dim=1) > 0  # these images add no alignment term


class Prefetcher:
    """Builds batches `start_step..` of one epoch on a thread, `depth` ahead of the consumer.

    Iterating yields (batch, seconds the consumer waited for it): the time the step stood
    idle waiting for images and maps.
    """

    def __init__(self, builder: BatchBuilder, epoch: int, start_step: int = 0, depth: int = 3) -> None:
        self.builder = builder
        self.epoch = epoch
        self.start_step = start_step
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="lfi-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for step in range(self.start_step, len(self.builder)):
                if self._stop.is_set():
                    return
                self._put(("batch", self.builder.build(self.epoch, step)))
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(("error", exc))

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[Batch, float]]:
        while True:
            start = time.perf_counter()
            kind, value = self._queue.get()
            waited = time.perf_counter() - start
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value, waited

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
