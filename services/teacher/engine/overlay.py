"""Pictures of maps for people to look at: a heat overlay that keeps the image readable, and its scale.

A map's low values are fully transparent and its colour's opacity grows with the value, so the shape
under a map stays visible and only where the map puts its mass is tinted. The colour runs from violet
to pale yellow with rising luminance (magma-like), so the scale reads in grey too and no colour
stands for two values. The dashboard draws the same scale in its browser (`heatColour` in
services/dashboard/static/heat.js): same stops, same transparent floor, same maximum opacity.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# (position in [0, 1], RGB): luminance rises stop to stop, hence along the whole scale
STOPS = ((0.0, (120, 28, 109)), (1 / 3, (200, 60, 115)), (2 / 3, (250, 125, 94)), (1.0, (252, 230, 150)))
TRANSPARENT_BELOW = 0.1  # values under this share of the scale's top are not drawn at all
MAX_ALPHA = 0.7  # even the peak lets 30 % of the image through
FLAT_RATIO = 3.0  # the scale's top is at least this times the map's mean: a flat map is drawn faint


def scale_top(values: np.ndarray) -> float:
    """The top of a map's colour scale: its peak, but at least FLAT_RATIO times its mean. A map that
    singles nothing out (uniform, or nearly) then tints the image faintly instead of hiding it under
    the scale's strongest colour; a map that does single something out is scaled to its peak."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    return max(float(values.max()), FLAT_RATIO * float(np.clip(values, 0, None).mean()))


def heat_rgba(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """RGBA (uint8, shape `values.shape + (4,)`) for map values on the scale 0..`vmax` (default `scale_top`).

    Opacity is 0 up to TRANSPARENT_BELOW·vmax, then rises linearly to MAX_ALPHA at vmax; the colour
    follows STOPS. Values above vmax are drawn as vmax, negative ones as 0.
    """
    values = np.asarray(values, dtype=np.float64)
    top = scale_top(values) if vmax is None else float(vmax)
    level = np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)
    positions = [p for p, _ in STOPS]
    rgb = np.stack([np.interp(level, positions, [c[k] for _, c in STOPS]) for k in range(3)], axis=-1)
    alpha = MAX_ALPHA * np.clip((level - TRANSPARENT_BELOW) / (1 - TRANSPARENT_BELOW), 0.0, 1.0)
    return np.round(np.concatenate([rgb, 255 * alpha[..., None]], axis=-1)).astype(np.uint8)


def overlay(image: Image.Image, interaction_map: np.ndarray, vmax: float | None = None) -> Image.Image:
    """The map's heat over the whole image (each map cell a block of pixels); RGB, the image's size."""
    rgba = Image.fromarray(heat_rgba(interaction_map, vmax), mode="RGBA")
    rgba = rgba.resize(image.size, Image.Resampling.NEAREST)  # cells stay cells: no invented detail
    return Image.alpha_composite(image.convert("RGBA"), rgba).convert("RGB")


def colour_bar(vmax: float, height: int, width: int = 18) -> Image.Image:
    """A vertical legend for the scale 0..`vmax` (top = vmax), its value range written beside it.

    The colours are drawn opaque so they can be told apart; the band the overlay leaves transparent
    (below TRANSPARENT_BELOW·vmax) is a grey checkerboard, the usual picture of "nothing drawn here".
    """
    font = ImageFont.load_default()
    floor_y = round((1 - TRANSPARENT_BELOW) * (height - 1))
    labels = [(0, _fmt(vmax)), (floor_y, _fmt(TRANSPARENT_BELOW * vmax)), (height - 1, "0")]
    text_width = max(int(font.getlength(text)) for _, text in labels) + 6
    bar = Image.new("RGB", (width + text_width + 4, height), (255, 255, 255))
    swatch = heat_rgba(np.linspace(vmax, 0.0, height)[:, None].repeat(width, axis=1), vmax)[..., :3]
    rows, cols = np.indices((height - floor_y, width))
    checks = np.where(((rows // 4 + cols // 4) % 2 == 0)[..., None], 204, 245).astype(np.uint8)
    swatch[floor_y:] = checks
    bar.paste(Image.fromarray(swatch, mode="RGB"), (0, 0))
    draw = ImageDraw.Draw(bar)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(90, 90, 90))
    for y, text in labels:
        draw.line((width, y, width + 3, y), fill=(90, 90, 90))
        draw.text((width + 5, min(max(0, y - 5), height - 11)), text, fill=(30, 30, 30), font=font)
    return bar


def overlay_with_scale(image: Image.Image, interaction_map: np.ndarray, vmax: float | None = None) -> Image.Image:
    """The overlay with its colour bar to the right: one picture that can be read on its own."""
    top = scale_top(interaction_map) if vmax is None else vmax
    pictured = overlay(image, interaction_map, top)
    bar = colour_bar(top, pictured.height)
    out = Image.new("RGB", (pictured.width + 8 + bar.width, pictured.height), (255, 255, 255))
    out.paste(pictured, (0, 0))
    out.paste(bar, (pictured.width + 8, 0))
    return out


def _fmt(value: float) -> str:
    return f"{value:.3g}"
