"""The synthetic detection set: several shapes per image on a texture, in COCO format.

The four shapes of `shared.synth` are the categories (COCO ids 1..4). Each image holds 1 to
`max_objects` shapes of 15-40 % of the side, placed so their boxes never overlap, each with its own
colour far from the texture's. The shift is in the backgrounds: `train` and `val` draw their texture from
the first two (`IN_DOMAIN`: stripes, dots), `shifted` from the other two (checker, noise), so a detector
that learned what shapes look like keeps its mAP and one that learned the textures' edges loses it.

Layout (see shared/coco.py)::

    train/000000.png ...   val/...   shifted/...
    annotations/instances_{train,val,shifted}.json   boxes, masks (uncompressed RLE), categories
    meta.json                                         format, version, arguments, counts

Every image follows from (seed, split, index) alone: same arguments, same bytes. No torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.coco import mask_to_rle
from shared.synth import (
    BACKGROUNDS,
    CLASSES,
    _colours,
    _draw_shape,
    _finish,
    _save_png,
    _shape_colour,
    _textured,
    clear_output,
)

FORMAT = "lfi-synth-detection"
VERSION = 1
SPLITS = ("train", "val", "shifted")
IN_DOMAIN = BACKGROUNDS[:2]
SHIFTED = BACKGROUNDS[2:]
_EXTENT = (0.15, 0.40)  # a shape's size as a fraction of the image side
_MAX_OVERLAP = 0.0  # boxes never overlap: every mask is the whole visible shape
_MANAGED = (*SPLITS, "annotations", "meta.json")


def validate_detection_arguments(counts: dict[str, int], max_objects: int, seed: int, image_size: int) -> None:
    """Raise ValueError, naming the argument, unless `generate_detection` can use these values."""
    for name, value, minimum in (*((f"n_{s}", v, 1 if s == "train" else 0) for s, v in counts.items()),
                                 ("max_objects", max_objects, 1), ("seed", seed, 0), ("image_size", image_size, 32)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 with x1/y1 exclusive, tight around the mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def make_detection_sample(split: str, index: int, *, seed: int = 0, image_size: int = 64,
                          max_objects: int = 3) -> tuple[np.ndarray, list[dict]]:
    """Image `index` of `split` (HxWx3 uint8) and its objects: `category` (index into CLASSES), `mask`, `box`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, SPLITS.index(split), index]))
    textures = SHIFTED if split == "shifted" else IN_DOMAIN
    background = textures[int(rng.integers(len(textures)))]
    c1, c2, _ = _colours(rng)  # its shape colour is unused; drawn all the same, as the stream has always been
    image = _textured(rng, background, c1, c2, image_size)
    wanted = int(rng.integers(1, max_objects + 1))
    objects: list[dict] = []
    for _ in range(wanted * 20):  # rejection sampling: a crowded image simply gets fewer shapes
        if len(objects) == wanted:
            break
        category = int(rng.integers(len(CLASSES)))
        extent = rng.uniform(*_EXTENT) * image_size
        reach = extent * 0.75  # the farthest any shape reaches from its centre, rotated
        centre = rng.uniform(reach, image_size - reach, size=2)
        mask = _draw_shape(CLASSES[category], image_size, centre, extent, rng.uniform(-0.44, 0.44),
                           bar=extent * 0.17)
        if not mask.any():
            continue
        box = _box(mask)
        if any(_iou(box, other["box"]) > _MAX_OVERLAP for other in objects):
            continue
        objects.append({"category": category, "mask": mask, "box": box})
    for item in objects:
        image[item["mask"]] = _shape_colour(rng, c1, c2).astype(np.float32)
    return _finish(rng, image), objects


def _prepare(out: Path) -> None:
    clear_output(out, FORMAT, _MANAGED)
    (out / "annotations").mkdir(parents=True, exist_ok=True)


def _coco_split(out: Path, split: str, count: int, seed: int, image_size: int, max_objects: int,
                progress: Callable[[int], None] | None) -> int:
    """Write one split's images and its instances file; returns the number of objects."""
    (out / split).mkdir(exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        pixels, objects = make_detection_sample(split, index, seed=seed, image_size=image_size,
                                                max_objects=max_objects)
        name = f"{index:06d}.png"
        _save_png(pixels, out / split / name)
        images.append({"id": index + 1, "file_name": name, "width": image_size, "height": image_size})
        for item in objects:
            x0, y0, x1, y1 = item["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": item["category"] + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": int(item["mask"].sum()), "iscrowd": 0,
                                "segmentation": mask_to_rle(item["mask"])})
        if progress is not None:
            progress(1)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    document = {"info": {"description": f"{FORMAT} v{VERSION} {split}"}, "images": images,
                "annotations": annotations, "categories": categories}
    tmp = out / "annotations" / f"instances_{split}.json.tmp"
    tmp.write_text(json.dumps(document))
    os.replace(tmp, out / "annotations" / f"instances_{split}.json")
    return len(annotations)


def generate_detection(out_dir: str | os.PathLike[str], *, n_train: int = 1000, n_val: int = 200,
                       n_shifted: int = 200, max_objects: int = 3, seed: int = 0, image_size: int = 64,
                       progress: Callable[[int], None] | None = None) -> dict[str, dict[str, int]]:
    """Write the set (layout in the module docstring); returns images and objects per split."""
    counts = {"train": n_train, "val": n_val, "shifted": n_shifted}
    validate_detection_arguments(counts, max_objects, seed, image_size)
    out = Path(out_dir)
    _prepare(out)
    report = {}
    for split, count in counts.items():
        if count:
            objects = _coco_split(out, split, count, seed, image_size, max_objects, progress)
            report[split] = {"images": count, "objects": objects}
    meta = {"format": FORMAT, "version": VERSION, "classes": list(CLASSES), "in_domain": list(IN_DOMAIN),
            "shifted": list(SHIFTED), "seed": int(seed), "image_size": int(image_size),
            "max_objects": int(max_objects), "counts": report}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return report
