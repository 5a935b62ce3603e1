"""The map math: fore−back contrast over image tokens (eqs. 11 and 12), then the map over the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.teacher.engine.visual import SquarePadding, crop_and_resample, native_grid, normalise


def rownorm(x: np.ndarray) -> np.ndarray:
    """Each row scaled to sum 1 over the image tokens; an all-zero row stays zero."""
    total = x.sum(axis=-1, keepdims=True)
    return np.divide(x, total, out=np.zeros_like(x), where=total > 0)


def contrast(fores: Sequence[np.ndarray], backs: Sequence[np.ndarray]) -> np.ndarray | None:
    """max(0, Σ C_fore − Σ C_back), each term renormalised over the image tokens first; None without a fore.

    One sequence is eq. 11; the sum over a dense request's instances is eq. 12. Renormalising first
    weighs each instance's object and background words equally, however many tokens spell them.
    """
    if not fores:
        return None
    return np.maximum(sum(rownorm(f) for f in fores) - sum(rownorm(b) for b in backs), 0.0)


def uniform_map(shape: tuple[int, int]) -> np.ndarray:
    return np.full(shape, 1.0 / (shape[0] * shape[1]), np.float32)


def image_map(square: np.ndarray | None, padding: SquarePadding, side: int,
              grid: tuple[int, int] | None) -> tuple[np.ndarray, bool]:
    """Token grid over the padded square -> normalised map over the image; uniform + True when degenerate.

    A degenerate map (no foreground, or fore ≤ back everywhere) comes back uniform rather than zero, so
    every map is a distribution that sums to 1; the flag says this one carries no information.
    """
    shape = grid or native_grid((side, side), padding)
    if square is None:
        return uniform_map(shape), True
    mass, _ = crop_and_resample(square.reshape(side, side), padding, shape)
    normalised = normalise(mass)
    if normalised is None:
        return uniform_map(shape), True
    return normalised.astype(np.float32), False
