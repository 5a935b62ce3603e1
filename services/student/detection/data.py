"""Detection batches: letterboxed images, DETR targets and one teacher map per instance on the memory grid.

Each image is scaled so its long side is `image_size` and placed top-left on a square canvas (the rest is
padding, masked out by `pixel_mask`), so one model input size serves COCO's mixed shapes. Boxes are DETR's
normalised (cx, cy, w, h) relative to the image (transformers' DETR processors do the same; the sine
positions are normalised over the unmasked region). Each non-crowd object's map is asked for on its own
(the dense prompt with that one box drawn, label forced) and integrated exactly onto the encoder memory's
cells that cover the image (services/student/transforms.py); the padding cells get no mass.
Randomness (the flip) comes from (seed, epoch, index) and the order from (seed, epoch): a batch is a pure
function of the position in training, so resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from services.student.data import Sample
from services.student.loader import BuilderSettings, decode_or_skip, epoch_order, steps_per_epoch
from services.student.maps import MapRequest, MapSource
from services.student.transforms import View, apply_to_map
from shared.coco import CocoImage, CocoSplit

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # transformers' DETR image processors
STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass
class DetectionBatch:
    pixel_values: torch.Tensor  # (B, 3, S, S)
    pixel_mask: torch.Tensor  # (B, S, S), 1 on the image, 0 on the padding
    labels: list[dict[str, torch.Tensor]]  # DETR targets: class_labels (n,), boxes (n, 4) normalised cx, cy, w, h
    maps: list[torch.Tensor] | None  # per image (n, grid_h * grid_w): each object's map, rows sum to 1 where valid
    map_valid: list[torch.Tensor] | None  # per image (n,) bool: missing or degenerate maps are not aligned
    images: list[CocoImage]
    flipped: list[bool]
    step: int
    skipped: int  # unreadable images dropped from this batch


def letterbox(image: Image.Image, size: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) float32 normalised pixels and the (size, size) mask of where the image lies."""
    scale = size / max(image.size)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    if flip:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = np.zeros((size, size, 3), np.float32)  # zero after normalisation: the mean colour
    canvas[:height, :width] = (np.asarray(resized, np.float32) / 255.0 - MEAN) / STD
    mask = np.zeros((size, size), np.int64)
    mask[:height, :width] = 1
    return canvas, mask


def targets(image: CocoImage, category_index: dict[int, int], flip: bool) -> tuple[dict[str, torch.Tensor], list]:
    """DETR's target dict for the image's non-crowd objects with a known category, and those objects."""
    kept = [o for o in image.objects if not o.iscrowd and o.category_id in category_index]
    boxes = np.array([o.bbox for o in kept], np.float32).reshape(-1, 4)
    x, y, w, h = boxes.T
    if flip:
        x = image.width - x - w
    centres = np.stack([(x + w / 2) / image.width, (y + h / 2) / image.height, w / image.width, h / image.height], 1)
    labels = torch.tensor([category_index[o.category_id] for o in kept], dtype=torch.long)
    return {"class_labels": labels, "boxes": torch.from_numpy(np.clip(centres, 0, 1).astype(np.float32))}, kept


class DetectionBatchBuilder(BuilderSettings):
    def __init__(self, split: CocoSplit, *, category_index: dict[int, int], category_names: dict[int, str],
                 image_size: int, grid: tuple[int, int], batch_size: int, seed: int, augment: bool,
                 map_source: MapSource | None = None) -> None:
        super().__init__(image_size=image_size, grid=grid, batch_size=batch_size, seed=seed, augment=augment,
                         map_source=map_source)
        self.split = split
        self.category_index = category_index
        self.category_names = category_names

    def __len__(self) -> int:
        return steps_per_epoch(len(self.split), self.batch_size)

    def _decode(self, image: CocoImage) -> Image.Image | None:
        return decode_or_skip(image.path, image.rel, self.unreadable)

    def _flip(self, epoch: int, index: int) -> bool:
        return self.augment and bool(np.random.default_rng([self.seed, epoch, index]).random() < 0.5)

    def build(self, epoch: int, step: int) -> DetectionBatch:
        order = epoch_order(len(self.split), self.seed, epoch) if self.augment else np.arange(len(self.split))
        indices = order[step * self.batch_size : (step + 1) * self.batch_size]
        images, decoded, flips = [], [], []
        for index in indices:
            picture = self._decode(self.split.images[int(index)])
            if picture is not None:
                images.append(self.split.images[int(index)])
                decoded.append(picture)
                flips.append(self._flip(epoch, int(index)))
        boxed = [letterbox(p, self.image_size, f) for p, f in zip(decoded, flips, strict=True)]
        pixels = np.stack([b[0] for b in boxed]) if boxed else np.zeros((0, self.image_size, self.image_size, 3))
        masks = np.stack([b[1] for b in boxed]) if boxed else np.zeros((0, self.image_size, self.image_size))
        labels, objects = [], []
        for image, flip in zip(images, flips, strict=True):
            target, kept = targets(image, self.category_index, flip)
            labels.append(target)
            objects.append(kept)
        maps = valid = None
        if self.map_source is not None:
            maps, valid = self._maps(images, decoded, flips, objects)
        return DetectionBatch(torch.from_numpy(pixels).permute(0, 3, 1, 2).float().contiguous(),
                              torch.from_numpy(masks).long(), labels, maps, valid, images, flips, step,
                              len(indices) - len(images))

    def _maps(self, images: list[CocoImage], decoded: list[Image.Image], flips: list[bool],
              objects: list[list]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each object's instance map from the map source, integrated onto the memory grid."""
        requests = []
        for image, picture, kept in zip(images, decoded, objects, strict=True):
            for item in kept:
                x, y, w, h = item.bbox
                sample = Sample(image.path, self.category_index[item.category_id], image.rel)
                label = self.category_names[item.category_id]
                requests.append(MapRequest(sample, picture, label, (x, y, x + w, y + h)))
        raw = self.map_source.fetch(requests) if requests else []
        maps, valid, position = [], [], 0
        for picture, flip, kept in zip(decoded, flips, objects, strict=True):
            rows = np.zeros((len(kept), self.grid[0] * self.grid[1]), np.float32)
            # the canvas covers image pixels [0, image_size / scale) on both axes; cells past the image get no mass
            reach = max(picture.size)
            for row, values in zip(rows, raw[position : position + len(kept)], strict=True):
                if values is not None:
                    values = values[:, ::-1] if flip else values
                    row[:] = apply_to_map(values, View((0.0, 0.0, reach, reach)), picture.size, self.grid).reshape(-1)
            position += len(kept)
            tensor = torch.from_numpy(rows)
            maps.append(tensor)
            valid.append(tensor.sum(dim=1) > 0)
        return maps, valid
