"""COCO-format detection data: the folder layout, reading it, and uncompressed RLE masks. No torch.

One layout serves the synthetic set, real COCO and VOC converted to COCO::

    ROOT/annotations/instances_<split>.json   COCO "instances" file (images, annotations, categories)
    ROOT/<split>/<file_name>                  its images (COCO: train2017/, val2017/)

A split is found by its annotation file. An image path is `ROOT/<split>/<file_name>` when that exists, else
`ROOT/<file_name>` (VOC-in-COCO files often name `VOC2007/JPEGImages/...` relative to the root).
Training uses `train2017` or `train`, validation `val2017` or `val`; any other split can be evaluated as a
held-out domain (the synthetic set's `shifted`). Boxes are COCO's `[x, y, w, h]` in pixels; crowd regions
(`iscrowd: 1`) are kept for the evaluator and never trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_SPLITS = ("train2017", "train")
VAL_SPLITS = ("val2017", "val")


class CocoFormatError(ValueError):
    """The folder or file is not COCO-format detection data; the message says what was expected."""


@dataclass(frozen=True)
class CocoObject:
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    category_id: int
    iscrowd: bool = False
    area: float = 0.0
    segmentation: Any = None


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    path: Path
    rel: str  # relative to the data set root, posix: names the image in map caches and stores
    width: int
    height: int
    objects: tuple[CocoObject, ...] = ()


@dataclass
class CocoSplit:
    name: str
    annotation_file: Path
    images: list[CocoImage]
    categories: list[dict[str, Any]]  # COCO's [{"id": ..., "name": ...}], in file order

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class CocoDataset:
    root: Path
    categories: list[dict[str, Any]]
    train: CocoSplit
    val: CocoSplit | None
    heldout: dict[str, CocoSplit] = field(default_factory=dict)

    @property
    def category_names(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.categories}


def annotation_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def find_split(root: Path, candidates: tuple[str, ...]) -> str | None:
    return next((s for s in candidates if annotation_file(root, s).is_file()), None)


def _object(raw: dict[str, Any], where: str) -> CocoObject:
    try:
        x, y, w, h = (float(v) for v in raw["bbox"])
        category = int(raw["category_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CocoFormatError(f"{where}: an annotation needs bbox [x, y, w, h] and category_id ({exc})") from None
    return CocoObject((x, y, w, h), category, bool(raw.get("iscrowd", 0)), float(raw.get("area", w * h)),
                      raw.get("segmentation"))


def read_split(root: str | Path, split: str) -> CocoSplit:
    """One split's images with their objects. Objects with an empty box are dropped (COCO has a few)."""
    root = Path(root)
    path = annotation_file(root, split)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CocoFormatError(f"{path} not found: a COCO-format split needs annotations/instances_{split}.json") \
            from None
    except (OSError, ValueError) as exc:
        raise CocoFormatError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise CocoFormatError(f"{path}: a COCO instances file needs 'images' and 'categories' lists")
    objects: dict[int, list[CocoObject]] = {}
    for raw in data.get("annotations", []):
        item = _object(raw, str(path))
        if item.bbox[2] > 0 and item.bbox[3] > 0:
            objects.setdefault(int(raw["image_id"]), []).append(item)
    images = []
    for raw in data["images"]:
        try:
            image_id, name = int(raw["id"]), str(raw["file_name"])
            width, height = int(raw["width"]), int(raw["height"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CocoFormatError(f"{path}: an image needs id, file_name, width and height ({exc})") from None
        image_path = root / split / name if (root / split / name).exists() else root / name
        images.append(CocoImage(image_id, image_path, image_path.relative_to(root).as_posix(), width, height,
                                tuple(objects.get(image_id, ()))))
    return CocoSplit(split, path, images, list(data["categories"]))


def discover_coco(root: str | Path, eval_domains: list[str] | None = None) -> CocoDataset:
    """The train split, the val split if present, and each named held-out split, all read."""
    root = Path(root)
    train = find_split(root, TRAIN_SPLITS)
    if train is None:
        raise CocoFormatError(f"{root} has no annotations/instances_train2017.json or instances_train.json: "
                              "not a COCO-format detection set (make one with `lfi data synth DIR --task detection`)")
    train_split = read_split(root, train)
    if not train_split.categories or not train_split.images:
        raise CocoFormatError(f"{train_split.annotation_file} lists no categories or no images")
    val = find_split(root, VAL_SPLITS)
    heldout = {name: read_split(root, name) for name in eval_domains or []}
    return CocoDataset(root, train_split.categories, train_split, read_split(root, val) if val else None, heldout)


def check_coco_layout(root: Path, eval_domains: list[str]) -> None:
    """Cheap checks for queueing a job (no JSON parsing): the annotation files exist."""
    if find_split(root, TRAIN_SPLITS) is None:
        raise CocoFormatError("dataset has no annotations/instances_train.json (or instances_train2017.json): "
                              "make a detection set with `lfi data synth DIR --task detection`")
    for domain in eval_domains:
        if not annotation_file(root, domain).is_file():
            raise CocoFormatError(f"eval domain {domain!r} has no annotations/instances_{domain}.json")


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a binary mask: run lengths in column-major order, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """The inverse of `mask_to_rle` (uncompressed RLE only; compressed strings need pycocotools)."""
    height, width = rle["size"]
    values = np.zeros(height * width, dtype=bool)
    position = 0
    for index, run in enumerate(rle["counts"]):
        if index % 2:
            values[position : position + run] = True
        position += run
    return values.reshape((height, width), order="F")
