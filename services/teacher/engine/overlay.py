"""Pictures of maps: a heat overlay on the image, for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image


def overlay(image: Image.Image, interaction_map: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """Blend a red-yellow heat map of `interaction_map` (any grid) over the whole image."""
    peak = float(interaction_map.max()) or 1.0
    heat = Image.fromarray((interaction_map / peak * 255).astype(np.uint8), mode="L")
    heat = heat.resize(image.size, Image.Resampling.NEAREST)
    level = np.asarray(heat, dtype=np.float32) / 255.0
    colour = np.stack([np.ones_like(level), level, np.zeros_like(level)], axis=-1) * 255
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    weight = (alpha * level)[..., None]
    return Image.fromarray((base * (1 - weight) + colour * weight).astype(np.uint8))
