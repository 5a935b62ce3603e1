"""Image-side geometry: the visual prompt, pad-to-square, and map resampling.

LLaVA-1.5 pads every image to a square with the processor's mean colour before
resizing (its `expand2square`), so its 24x24 token grid covers the whole image
plus the padding. Maps are cut back to the image and resampled by area, so a
cell's value is the share of attention mass that falls on that part of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from shared.schemas import Box

BOX_COLOUR = (255, 0, 0)


@dataclass(frozen=True)
class SquarePadding:
    """Where the original image sits inside its padded square (pixels)."""

    width: int
    height: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def left(self) -> int:
        return (self.side - self.width) // 2

    @property
    def top(self) -> int:
        return (self.side - self.height) // 2


def pad_to_square(image: Image.Image, fill: Sequence[float]) -> tuple[Image.Image, SquarePadding]:
    """LLaVA-1.5's expand2square: centre the image on a square of colour `fill` (0..1 floats)."""
    padding = SquarePadding(*image.size)
    if image.width == image.height:
        return image, padding
    colour = tuple(round(c * 255) for c in fill)
    square = Image.new("RGB", (padding.side, padding.side), colour)
    square.paste(image, (padding.left, padding.top))
    return square, padding


def draw_boxes(image: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """Draw boxes as the visual prompt (the paper's Figure 9), on a copy."""
    if not boxes:
        return image
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(0.006 * max(image.size)))
    for box in boxes:
        draw.rectangle(box.xyxy, outline=BOX_COLOUR, width=width)
    return out


def _overlap_matrix(n_out: int, n_src: int, start: float, stop: float, side: float) -> np.ndarray:
    """Fraction of each source cell (over [0, side)) that falls in each output cell over [start, stop)."""
    src_edges = np.linspace(0.0, side, n_src + 1)
    out_edges = np.linspace(start, stop, n_out + 1)
    lo = np.maximum(out_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(out_edges[1:, None], src_edges[None, 1:])
    return np.clip(hi - lo, 0.0, None) / (side / n_src)


def native_grid(grid_hw: tuple[int, int], padding: SquarePadding) -> tuple[int, int]:
    """The source grid's resolution over the image itself (e.g. 24x12 for a 1:2 image)."""
    h, w = grid_hw
    return (max(1, round(h * padding.height / padding.side)), max(1, round(w * padding.width / padding.side)))


def crop_and_resample(
    square_map: np.ndarray, padding: SquarePadding, out_hw: tuple[int, int] | None
) -> tuple[np.ndarray, float]:
    """Cut the padding off a map over the padded square and resample it onto `out_hw` cells.

    Cells hold mass; a target cell gets the mass of the source area it covers.
    Returns the map over the image (not yet renormalised) and the mass it kept.
    """
    src_h, src_w = square_map.shape[-2:]
    out_h, out_w = out_hw or native_grid((src_h, src_w), padding)
    side = float(padding.side)
    rows = _overlap_matrix(out_h, src_h, padding.top, padding.top + padding.height, side)
    cols = _overlap_matrix(out_w, src_w, padding.left, padding.left + padding.width, side)
    out = rows @ square_map.astype(np.float64) @ cols.T
    return out, float(out.sum())


def normalise(mass: np.ndarray) -> np.ndarray | None:
    """Scale to sum 1, or None when there is no positive mass to scale."""
    total = float(mass.sum())
    if not np.isfinite(total) or total <= 0.0:
        return None
    return mass / total
