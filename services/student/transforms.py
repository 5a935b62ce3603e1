"""Augmentations that move an image and its interaction map together (the FKD lesson).

A map is a density over the *whole* image: map cell (i, j) of an (h, w) map covers the image
rectangle [j·W/w, (j+1)·W/w) × [i·H/h, (i+1)·H/h). A crop box in image pixels therefore picks
the same region of the map, which is integrated exactly (area resampling) onto the student's
patch grid and renormalised; a flip mirrors both. Pure numpy and PIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class View:
    """Where the student's square input comes from: a box in image pixels, maybe mirrored."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    flip: bool = False


def full_view(width: int, height: int) -> View:
    return View((0.0, 0.0, float(width), float(height)), False)


def random_resized_view(rng: np.random.Generator, width: int, height: int, *, scale: tuple[float, float] = (0.35, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5) -> View:
    """torchvision's RandomResizedCrop sampling (10 tries, then the whole image), plus a horizontal flip."""
    area = width * height
    flip = bool(rng.random() < flip_p)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            return View((x0, y0, x0 + w, y0 + h), flip)
    return View((0.0, 0.0, float(width), float(height)), flip)


def apply_to_image(image: Image.Image, view: View, size: int) -> np.ndarray:
    """The view as a (size, size, 3) uint8 array."""
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=view.box)
    if view.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def apply_to_map(values: np.ndarray, view: View, image_size: tuple[int, int], grid: tuple[int, int], *,
                 min_kept_mass: float = 0.0) -> np.ndarray:
    """The map's mass inside the view, integrated onto `grid` and renormalised (all zeros stay zeros).

    A view that keeps less than `min_kept_mass` of the map's mass gives all zeros (no target) instead:
    renormalising a sliver of the teacher's attention would turn it into a confident target for a
    region the teacher hardly looked at.
    """
    width, height = image_size
    h, w = values.shape
    table = np.zeros((h + 1, w + 1), dtype=np.float64)
    table[1:, 1:] = np.cumsum(np.cumsum(values.astype(np.float64), axis=0), axis=1)
    x0, y0, x1, y1 = view.box
    xs = np.linspace(x0 / width * w, x1 / width * w, grid[1] + 1)
    ys = np.linspace(y0 / height * h, y1 / height * h, grid[0] + 1)
    # The integral of a piecewise-constant density is bilinear inside each cell, so bilinear
    # interpolation of the summed-area table is exact at fractional box edges.
    cumulative = _bilinear(table, ys, xs)
    mass = cumulative[1:, 1:] - cumulative[:-1, 1:] - cumulative[1:, :-1] + cumulative[:-1, :-1]
    mass = np.clip(mass, 0.0, None)
    if view.flip:
        mass = mass[:, ::-1]
    total = mass.sum()
    whole = float(table[-1, -1])
    if total <= 0 or whole <= 0 or total < min_kept_mass * whole:
        return np.zeros(grid, dtype=np.float32)
    return (mass / total).astype(np.float32)


def _bilinear(table: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    ys = np.clip(ys, 0, table.shape[0] - 1)
    xs = np.clip(xs, 0, table.shape[1] - 1)
    y0 = np.minimum(np.floor(ys).astype(int), table.shape[0] - 2)
    x0 = np.minimum(np.floor(xs).astype(int), table.shape[1] - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = table[y0][:, x0] * (1 - fx) + table[y0][:, x0 + 1] * fx
    bottom = table[y0 + 1][:, x0] * (1 - fx) + table[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy
