"""The overlay's colour scale (values -> RGBA) and the pictures built from it: pure functions."""

from __future__ import annotations

import numpy as np
from PIL import Image

from services.teacher.engine.overlay import (
    MAX_ALPHA,
    TRANSPARENT_BELOW,
    colour_bar,
    heat_rgba,
    overlay,
    overlay_with_scale,
    scale_top,
)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def test_low_values_are_fully_transparent_and_the_peak_is_not_opaque():
    values = np.array([0.0, 0.5 * TRANSPARENT_BELOW, TRANSPARENT_BELOW, 0.5, 1.0])
    rgba = heat_rgba(values, vmax=1.0)
    assert rgba.shape == (5, 4) and rgba.dtype == np.uint8
    assert list(rgba[:3, 3]) == [0, 0, 0]
    assert 0 < rgba[3, 3] < rgba[4, 3] == round(255 * MAX_ALPHA)


def test_colour_and_opacity_rise_with_the_value():
    rgba = heat_rgba(np.linspace(0, 1, 201), vmax=1.0)
    luminance = _luminance(rgba)
    assert np.all(np.diff(luminance) > 0)  # strictly: no two values share a colour
    assert np.all(np.diff(rgba[:, 3].astype(int)) >= 0)


def test_a_flat_map_is_drawn_faint_and_a_peaked_one_up_to_its_peak():
    flat = np.full((8, 8), 1 / 64)
    assert scale_top(flat) == 3 / 64
    assert 0 < heat_rgba(flat)[0, 0, 3] < 0.25 * 255  # visible, but the image stays readable under it
    peaked = np.zeros((8, 8))
    peaked[2:4, 2:4] = 0.25
    assert scale_top(peaked) == 0.25 and heat_rgba(peaked)[2, 2, 3] == round(255 * MAX_ALPHA)


def test_the_scale_is_relative_to_vmax_and_clipped():
    values = np.array([[0.0, 0.01], [0.02, 0.04]])
    assert np.array_equal(heat_rgba(values), heat_rgba(values * 1000))  # default: the map's own scale
    fixed = heat_rgba(values, vmax=0.02)
    assert np.array_equal(fixed[1, 1], fixed[1, 0])  # above vmax is drawn as vmax
    assert np.array_equal(heat_rgba(np.array([-1.0, 0.0]))[0], heat_rgba(np.array([0.0]))[0])
    assert np.all(heat_rgba(np.zeros((3, 3)))[..., 3] == 0)  # an all-zero map draws nothing


def test_the_overlay_keeps_the_image_where_the_map_is_low():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    values = np.zeros((4, 4))
    values[1:3, 1:3] = [[0.2, 0.4], [0.6, 1.0]]
    values[0, 3] = 0.05  # under the transparent floor
    out = np.asarray(overlay(image, values))
    base = np.asarray(image)
    assert out.shape == base.shape
    untouched = np.ones((64, 64), bool)
    untouched[16:48, 16:48] = False
    assert np.array_equal(out[untouched], base[untouched])  # zeros and the floor leave every pixel alone
    peak = out[32:48, 32:48].astype(int)
    assert np.abs(peak - base[32:48, 32:48]).mean() > 20  # the peak is visibly tinted ...
    assert np.corrcoef(peak[..., 1].ravel(), base[32:48, 32:48, 1].ravel())[0, 1] > 0.2  # ... and still shows the image


def test_the_colour_bar_and_the_picture_with_it():
    bar = np.asarray(colour_bar(0.05, height=100))
    assert bar.shape[0] == 100
    floor = round((1 - TRANSPARENT_BELOW) * 99)
    column = _luminance(bar[1:floor - 1, 5])  # inside the outline, top = vmax, down to the transparent floor
    assert np.all(np.diff(column) < 0)
    assert set(map(tuple, bar[floor + 1:-1, 1:17].reshape(-1, 3))) == {(204, 204, 204), (245, 245, 245)}
    picture = overlay_with_scale(Image.new("RGB", (64, 64), (0, 128, 0)), np.eye(4))
    assert picture.height == 64 and picture.width > 64 + 18
