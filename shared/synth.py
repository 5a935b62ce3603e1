"""A deterministic synthetic "shape on texture" data set with a tunable background shortcut.

Four shape classes (`CLASSES`) are drawn on four textures (`BACKGROUNDS`). Class i owns
background i: in the in-domain splits (`train`, `val`) an image gets its class's own
background with probability `correlation` and one of the other three otherwise, so a model
can score well by reading the texture alone. The `shifted` split never uses the own
background, which exposes that shortcut. Every image comes with a binary mask of the
shape, the ground truth for "where should the model look".

Layout under `out_dir` (ImageFolder style, one folder per class)::

    train/<class>/<class>-00000.png         RGB, image_size x image_size
    val/<class>/...   shifted/<class>/...
    masks/<split>/<class>/<same name>.png   mode "L", 0 or 255
    annotations.jsonl                       one object per image, written last (atomically)
    meta.json                               format, version, classes, backgrounds, counts, ...

`bbox` in the annotations is ``[x0, y0, x1, y1]`` in pixels with x1/y1 exclusive (PIL's
box convention), tight around the mask.

Each image's random stream is seeded from ``(seed, split, class, index)`` alone, so output
does not depend on generation order, and the same arguments give byte-identical files.
Plain numpy + PIL; no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
BACKGROUNDS: tuple[str, ...] = ("stripes", "dots", "checker", "noise")
# The `correlation` at which every background is equally likely for every class (no shortcut).
UNIFORM_CORRELATION = 1.0 / len(BACKGROUNDS)
SPLITS: tuple[str, ...] = ("train", "val", "shifted")
FORMAT = "lfi-synth"
VERSION = 1

# Shape extent (diameter, side, arm span) as a fraction of the image side.
_SIZE_RANGE = (0.25, 0.55)
# Minimum RGB distance between the shape colour and every colour the background can take,
# so the shape is always clearly visible; and between the two texture colours.
_SHAPE_CONTRAST = 110.0
_TEXTURE_CONTRAST = 60.0
_PIXEL_NOISE = 4.0  # gentle per-pixel jitter so no region is perfectly flat
_MAX_ROTATION = np.deg2rad(25.0)  # small, so a square never turns into a diamond-ish "other" shape
_MANAGED = ("train", "val", "shifted", "masks", "annotations.jsonl", "annotations.jsonl.tmp", "meta.json")


@dataclass(frozen=True)
class Sample:
    """One rendered image: ``image`` is HxWx3 uint8, ``mask`` HxW bool (the shape's pixels)."""

    image: np.ndarray
    mask: np.ndarray
    cls: str
    background: str
    bbox: tuple[int, int, int, int]


@dataclass
class SynthReport:
    """What `generate` wrote: per-split image counts and the own-background fraction."""

    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    own_background: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return sum(self.counts.values())


def validate_arguments(n_train: int, n_val: int, n_shifted: int, correlation: float, seed: int,
                       image_size: int) -> None:
    """Raise ValueError, naming the argument, unless `generate` can use these values."""
    for name, value, minimum in (("n_train_per_class", n_train, 1), ("n_val_per_class", n_val, 0),
                                 ("n_shifted_per_class", n_shifted, 0), ("image_size", image_size, 16),
                                 ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if not isinstance(correlation, (int, float)) or not 0.0 <= float(correlation) <= 1.0:
        raise ValueError(f"correlation must be a number in [0, 1], got {correlation!r}")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each HxW float32; cached since every image reuses them."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(axis, axis, indexing="ij")
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _rotate(xs: np.ndarray, ys: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return xs * c + ys * s, ys * c - xs * s


def _texture(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Blend weights in [0, 1] (HxW float32) for the background's two colours."""
    xs, ys = _grid(size)
    if kind == "stripes":
        period = max(3.0, rng.uniform(size / 10, size / 4))
        u, _ = _rotate(xs, ys, rng.uniform(0, np.pi))
        duty = rng.uniform(-0.3, 0.3)  # uneven stripe widths, so the texture is not one fixed pattern
        return (np.sin(u * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 2 * np.pi))) > duty).astype(
            np.float32)
    if kind == "dots":
        spacing = max(4.0, rng.uniform(size / 8, size / 4))
        radius = spacing * rng.uniform(0.2, 0.35)
        u, v = _rotate(xs, ys, rng.uniform(0, np.pi / 2))
        half = spacing / 2
        du = np.mod(u - rng.uniform(0, spacing) + half, spacing) - half
        dv = np.mod(v - rng.uniform(0, spacing) + half, spacing) - half
        return (du * du + dv * dv <= radius * radius).astype(np.float32)
    if kind == "checker":
        cell = max(3.0, rng.uniform(size / 10, size / 5))
        u, v = _rotate(xs, ys, rng.uniform(0, np.pi / 2))
        u = np.floor((u + rng.uniform(0, cell)) / cell)
        v = np.floor((v + rng.uniform(0, cell)) / cell)
        return np.mod(u + v, 2).astype(np.float32)
    if kind == "noise":
        # Value noise: a coarse random lattice, bilinearly upsampled (separable, as two matrix
        # products), mixed with white noise so it reads as "noise" rather than a smooth gradient.
        cells = int(rng.integers(3, 9))
        lattice = rng.random((cells + 1, cells + 1), dtype=np.float32)
        pos = (np.arange(size, dtype=np.float32) + 0.5) * (cells / size)
        lo = np.minimum(pos.astype(np.int64), cells - 1)
        frac = pos - lo
        weights = np.zeros((size, cells + 1), dtype=np.float32)
        weights[np.arange(size), lo] = 1 - frac
        weights[np.arange(size), lo + 1] = frac
        smooth = weights @ lattice @ weights.T
        # Stretch to the full [0, 1] range: a few averaged lattice values would otherwise sit near
        # 0.5 and the texture would look almost flat.
        smooth = (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-6)
        return np.clip(0.7 * smooth + 0.3 * rng.random((size, size), dtype=np.float32), 0, 1)
    raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")


def _shape_mask(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """The shape's pixels (HxW bool), with random extent, position and a small rotation."""
    extent = rng.uniform(*_SIZE_RANGE) * size
    half = extent / 2
    thickness = 0.0
    if shape == "circle":
        reach = half
    elif shape == "square":
        reach = half * np.sqrt(2)
    elif shape == "triangle":
        reach = extent / np.sqrt(3)  # circumradius of an equilateral triangle with side `extent`
    elif shape == "cross":
        thickness = extent * rng.uniform(0.28, 0.38)
        reach = np.hypot(half, thickness / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(CLASSES)}")
    # Keep the whole (rotated) shape inside the frame: the mask must describe all of it.
    cx, cy = rng.uniform(reach, size - reach, size=2)
    angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
    return _draw_shape(shape, size, (cx, cy), extent, angle, bar=thickness / 2)


def _draw_shape(shape: str, size: int, centre: tuple[float, float] | np.ndarray, extent: float, angle: float, *,
                bar: float) -> np.ndarray:
    """The pixels (HxW bool) of `shape` with this centre, extent (diameter, side, arm span) and rotation;
    `bar` is half a cross arm's thickness (the other shapes ignore it)."""
    xs, ys = _grid(size)
    u, v = _rotate(xs - np.float32(centre[0]), ys - np.float32(centre[1]), angle)
    half = extent / 2
    if shape == "circle":
        return u * u + v * v <= half * half
    if shape == "square":
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == "triangle":
        # Inside iff on the inner side of all three edges; the edge normals point away from
        # the vertices, the first vertex straight up (image y grows downward).
        inradius = extent / (2 * np.sqrt(3))
        inside = np.ones((size, size), dtype=bool)
        for k in range(3):
            theta = -np.pi / 2 + k * 2 * np.pi / 3
            inside &= -(u * np.float32(np.cos(theta)) + v * np.float32(np.sin(theta))) <= inradius
        return inside
    return ((np.abs(u) <= half) & (np.abs(v) <= bar)) | ((np.abs(v) <= half) & (np.abs(u) <= bar))


def _segment_distance(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance from `point` to the RGB segment a-b (every colour a two-colour blend can take)."""
    ab = b - a
    t = np.clip(np.dot(point - a, ab) / max(float(np.dot(ab, ab)), 1e-9), 0.0, 1.0)
    return float(np.linalg.norm(point - (a + t * ab)))


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two texture colours that differ visibly and a shape colour far from both and their blends."""
    for _ in range(64):
        c1, c2 = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(c1 - c2) >= _TEXTURE_CONTRAST:
            break
    else:  # practically unreachable; deterministic fallback keeps the texture visible
        c2 = 255 - c1
    return c1, c2, _shape_colour(rng, c1, c2)


def _shape_colour(rng: np.random.Generator, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """A colour far from every blend of the texture's two colours, so a shape stands out."""
    for _ in range(64):
        shape = rng.uniform(0, 255, size=3)
        if _segment_distance(shape, c1, c2) >= _SHAPE_CONTRAST:
            return shape
    # Fall back to the RGB cube corner farthest from the background colours.
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], dtype=np.float64)
    return max(corners, key=lambda c: _segment_distance(c, c1, c2))


def _textured(rng: np.random.Generator, background: str, c1: np.ndarray, c2: np.ndarray, size: int) -> np.ndarray:
    """The background (HxWx3 float32): the texture's blend of its two colours."""
    weights = _texture(rng, background, size)[..., None]
    return (1 - weights) * c1.astype(np.float32) + weights * c2.astype(np.float32)


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gentle pixel noise on the drawn float image, then rounded to uint8 pixels."""
    image += rng.normal(0.0, _PIXEL_NOISE, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _choose_background(rng: np.random.Generator, class_index: int, split: str, correlation: float) -> int:
    own = class_index
    others = [i for i in range(len(BACKGROUNDS)) if i != own]
    if split == "shifted":
        return others[int(rng.integers(len(others)))]
    # Draw both numbers every time so the stream after this point does not depend on the branch.
    keep, pick = rng.random(), int(rng.integers(len(others)))
    return own if keep < correlation else others[pick]


def _rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), class_index, index]))


def make_sample(split: str, class_index: int, index: int, *, seed: int = 0, correlation: float = 0.9,
                image_size: int = 64) -> Sample:
    """Render image `index` of class `class_index` in `split`; a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not 0 <= class_index < len(CLASSES):
        raise ValueError(f"class_index must be in [0, {len(CLASSES)}), got {class_index}")
    rng = _rng(seed, split, class_index, index)
    background = BACKGROUNDS[_choose_background(rng, class_index, split, correlation)]
    c1, c2, shape_colour = _colours(rng)
    image = _textured(rng, background, c1, c2, image_size)
    mask = _shape_mask(rng, CLASSES[class_index], image_size)
    image[mask] = shape_colour.astype(np.float32)
    pixels = _finish(rng, image)
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    y0, y1 = int(np.argmax(rows)), int(image_size - np.argmax(rows[::-1]))
    x0, x1 = int(np.argmax(cols)), int(image_size - np.argmax(cols[::-1]))
    return Sample(pixels, mask, CLASSES[class_index], background, (x0, y0, x1, y1))


def _save_png(array: np.ndarray, path: Path) -> None:
    # Pillow writes no time or text chunks unless asked, so fixed pixels give fixed bytes.
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _prepare(out: Path) -> None:
    clear_output(out, FORMAT, _MANAGED)
    out.mkdir(parents=True, exist_ok=True)


def clear_output(out: Path, data_format: str, managed: tuple[str, ...]) -> None:
    """Make `out` ready: new/empty, or an earlier output of the `data_format` generator (its meta.json says so)
    whose `managed` files and folders are removed."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            previous = json.loads((out / "meta.json").read_text())
        except (OSError, ValueError):
            previous = None
        if not isinstance(previous, dict) or previous.get("format") != data_format:
            raise FileExistsError(f"{out} is not empty and is not an {data_format} data set; use a new or empty "
                                  "folder")
        # Remove only what we write, so a smaller rerun leaves no stale images behind.
        for name in managed:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def generate(out_dir: str | os.PathLike[str], *, n_train_per_class: int = 250, n_val_per_class: int = 50,
             n_shifted_per_class: int = 50, correlation: float = 0.9, seed: int = 0, image_size: int = 64,
             progress: Callable[[int], None] | None = None) -> SynthReport:
    """Write the data set to `out_dir` (see the module docstring for the layout); return counts.

    `out_dir` must be new, empty, or an earlier output of this function (whose files are replaced).
    `progress`, if given, is called with the number of images just written.
    """
    validate_arguments(n_train_per_class, n_val_per_class, n_shifted_per_class, correlation, seed, image_size)
    correlation = float(correlation)
    out = Path(out_dir)
    _prepare(out)
    per_class = {"train": n_train_per_class, "val": n_val_per_class, "shifted": n_shifted_per_class}
    counts = {split: per_class[split] * len(CLASSES) for split in SPLITS}
    meta = {"format": FORMAT, "version": VERSION, "classes": list(CLASSES), "backgrounds": list(BACKGROUNDS),
            "correlation": correlation, "seed": int(seed), "image_size": int(image_size), "counts": counts}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    report = SynthReport(out_dir=out, counts=counts)
    lines: list[str] = []
    for split in SPLITS:
        own = 0
        for class_index, cls in enumerate(CLASSES):
            if per_class[split] == 0:
                continue  # no empty class folders: ImageFolder readers reject them
            image_dir, mask_dir = out / split / cls, out / "masks" / split / cls
            image_dir.mkdir(parents=True, exist_ok=True)
            mask_dir.mkdir(parents=True, exist_ok=True)
            for index in range(per_class[split]):
                sample = make_sample(split, class_index, index, seed=seed, correlation=correlation,
                                     image_size=image_size)
                name = f"{cls}-{index:05d}.png"
                _save_png(sample.image, image_dir / name)
                _save_png(sample.mask.astype(np.uint8) * 255, mask_dir / name)
                own += sample.background == BACKGROUNDS[class_index]
                lines.append(json.dumps({"split": split, "path": f"{split}/{cls}/{name}",
                                         "mask": f"masks/{split}/{cls}/{name}", "class": cls,
                                         "background": sample.background, "bbox": list(sample.bbox)}))
                if progress is not None:
                    progress(1)
        report.own_background[split] = own / counts[split] if counts[split] else 0.0

    # Written last and atomically: its presence marks a complete data set.
    tmp = out / "annotations.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, out / "annotations.jsonl")
    return report


def read_annotations(out_dir: str | os.PathLike[str]) -> list[dict]:
    """The annotation records of a generated data set, in file order."""
    text = (Path(out_dir) / "annotations.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
