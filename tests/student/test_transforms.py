"""Crops and flips move the map with the image (a marker test), and area resampling keeps mass."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.student.transforms import View, apply_to_image, apply_to_map, full_view, random_resized_view


def _marker_image(width=96, height=64, at=(70, 20), radius=5):
    pixels = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    pixels[(xx - at[0]) ** 2 + (yy - at[1]) ** 2 <= radius ** 2] = 255
    return Image.fromarray(pixels)


def _marker_map(image: Image.Image, cells=(16, 24)):
    """The marker's brightness at a coarse resolution: what a teacher that looks at it would return."""
    small = np.asarray(image.convert("L").resize((cells[1], cells[0]), Image.Resampling.BOX), np.float32)
    return small / small.sum()


def test_marker_stays_under_its_map_after_crop_and_flip():
    image = _marker_image()
    values = _marker_map(image)
    checked = flipped = 0
    for seed in range(40):
        view = random_resized_view(np.random.default_rng(seed), *image.size, scale=(0.5, 1.0))
        x0, y0, x1, y1 = view.box
        if not (x0 + 6 < 70 < x1 - 6 and y0 + 6 < 20 < y1 - 6):
            continue  # this crop cut the marker off
        pixels = apply_to_image(image, view, 32).mean(axis=2)
        moved = apply_to_map(values, view, image.size, (8, 8))
        assert moved.sum() == pytest.approx(1.0, abs=1e-5)
        bright = pixels.reshape(8, 4, 8, 4).mean(axis=(1, 3))  # the image on the same 8x8 grid
        where = np.unravel_index(bright.argmax(), bright.shape)
        assert np.unravel_index(moved.argmax(), moved.shape) == where, seed
        checked += 1
        if view.flip:  # a flip that left the map alone would put it on the wrong side
            flipped += 1
            unflipped = apply_to_map(values, View(view.box, False), image.size, (8, 8))
            assert np.unravel_index(unflipped.argmax(), (8, 8))[1] != where[1]
    assert checked >= 20 and flipped >= 5


def test_area_resampling_is_exact_for_aligned_boxes():
    values = np.random.default_rng(0).random((24, 24)).astype(np.float32)
    values /= values.sum()
    assert np.allclose(apply_to_map(values, full_view(240, 240), (240, 240), (24, 24)), values, atol=1e-6)
    pooled = values.reshape(12, 2, 12, 2).sum(axis=(1, 3))
    assert np.allclose(apply_to_map(values, full_view(240, 240), (240, 240), (12, 12)), pooled, atol=1e-6)
    quarter = values[:12, 12:] / values[:12, 12:].sum()
    assert np.allclose(apply_to_map(values, View((120, 0, 240, 120)), (240, 240), (12, 12)), quarter, atol=1e-6)


def test_an_all_zero_map_stays_zero():
    assert not apply_to_map(np.zeros((24, 24), np.float32), full_view(10, 10), (10, 10), (4, 4)).any()


def test_views_are_inside_the_image_and_reproducible():
    for seed in range(50):
        a = random_resized_view(np.random.default_rng(seed), 100, 60)
        b = random_resized_view(np.random.default_rng(seed), 100, 60)
        assert a == b
        x0, y0, x1, y1 = a.box
        assert 0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 60


def test_a_crop_that_keeps_too_little_of_the_map_gives_no_target():
    values = np.zeros((8, 8), np.float32)
    values[0, 0] = 0.999  # nearly all the teacher's attention in the top-left cell
    values[7, 7] = 0.001
    corner = View((56.0, 56.0, 64.0, 64.0))  # the bottom-right cell: 0.1 % of the mass
    renormalised = apply_to_map(values, corner, (64, 64), (2, 2))
    assert renormalised.sum() == pytest.approx(1.0)  # without a floor, a sliver becomes a full target
    assert not apply_to_map(values, corner, (64, 64), (2, 2), min_kept_mass=0.25).any()
    half = View((0.0, 0.0, 32.0, 64.0))  # the left half keeps 99.9 %: a target as before
    kept = apply_to_map(values, half, (64, 64), (2, 2), min_kept_mass=0.25)
    assert kept.sum() == pytest.approx(1.0) and kept[0, 0] == pytest.approx(1.0)
    assert apply_to_map(values, half, (64, 64), (2, 2), min_kept_mass=0.998).any()
    assert not apply_to_map(values, half, (64, 64), (2, 2), min_kept_mass=0.9999).any()
