"""The map math on its own: the fore−back contrast of eqs. 11 and 12, and the map over the image."""

from __future__ import annotations

import numpy as np
import pytest

from services.teacher.engine.maps import contrast, image_map, rownorm
from services.teacher.engine.visual import SquarePadding


def test_rownorm_scales_rows_to_one_and_leaves_zero_rows_zero():
    x = np.array([[1.0, 3.0], [0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(rownorm(x), [[0.25, 0.75], [0.0, 0.0]])


def test_eq11_one_sequence_is_fore_minus_back_clipped_at_zero():
    fore = np.array([2.0, 1.0, 1.0, 0.0], np.float32)  # renormalised: .5 .25 .25 0
    back = np.array([0.0, 1.0, 1.0, 2.0], np.float32)  # renormalised: 0 .25 .25 .5
    np.testing.assert_allclose(contrast([fore], [back]), [0.5, 0.0, 0.0, 0.0])


def test_eq11_without_a_background_is_the_renormalised_foreground():
    fore = np.array([3.0, 1.0], np.float32)
    np.testing.assert_allclose(contrast([fore], []), [0.75, 0.25])


def test_eq12_sums_instances_before_subtracting():
    # Instance 2's object sits where instance 1's background is: summed first, it survives.
    fores = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 4.0, 0.0])]
    backs = [np.array([0.0, 1.0, 0.0])]
    np.testing.assert_allclose(contrast(fores, backs), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(contrast(fores[1:], []), [0.0, 1.0, 0.0])


def test_no_foreground_means_no_contrast():
    assert contrast([], [np.ones(4)]) is None


def test_contrast_keeps_per_layer_rows_apart():
    fore = np.array([[1.0, 0.0], [0.0, 1.0]])  # (L, N)
    back = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(contrast([fore], [back]), [[1.0, 0.0], [0.0, 0.0]])


def test_a_degenerate_square_becomes_a_flagged_uniform_map():
    padding = SquarePadding(width=20, height=10)
    uniform, degenerate = image_map(None, padding, side=4, grid=(2, 5))
    assert degenerate
    np.testing.assert_allclose(uniform, np.full((2, 5), 0.1))
    zeros, degenerate = image_map(np.zeros(16), padding, side=4, grid=None)
    assert degenerate and zeros.shape == (2, 4)  # the native grid of a 2:1 image


def test_the_image_map_drops_the_padding_and_sums_to_one():
    padding = SquarePadding(width=20, height=10)  # rows 0 and 3 of a 4x4 grid are padding
    square = np.zeros((4, 4))
    square[0, :] = 5.0  # mass on the padding only counts nowhere
    square[1, 0] = 1.0
    result, degenerate = image_map(square.ravel(), padding, side=4, grid=None)
    assert not degenerate and result.dtype == np.float32
    assert result.sum() == pytest.approx(1.0)
    assert result[0, 0] == pytest.approx(1.0)
