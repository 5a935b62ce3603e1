import numpy as np
import pytest
from PIL import Image

from services.teacher.engine.visual import SquarePadding, crop_and_resample, draw_boxes, normalise, pad_to_square
from shared.schemas import Box


@pytest.mark.parametrize("size", [(400, 200), (200, 400), (300, 300), (333, 100)])
@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_a_marker_in_an_image_corner_stays_in_that_corner(size, corner):
    width, height = size
    padding = SquarePadding(width, height)
    side = padding.side
    # A 24x24 token map over the padded square, with all mass in the token that
    # covers the chosen corner of the *image* (not of the square).
    x = padding.left + 1 if corner == "top-left" else padding.left + width - 2
    y = padding.top + 1 if corner == "top-left" else padding.top + height - 2
    square = np.zeros((24, 24))
    square[int(y * 24 / side), int(x * 24 / side)] = 1.0
    mass, _kept = crop_and_resample(square, padding, (14, 14))
    out = normalise(mass)
    assert out.sum() == pytest.approx(1.0)
    peak = np.unravel_index(out.argmax(), out.shape)
    assert peak == ((0, 0) if corner == "top-left" else (13, 13))


def test_mass_in_the_padding_is_dropped():
    padding = SquarePadding(400, 200)  # pad rows 0..99 and 300..399 of the square
    square = np.zeros((24, 24))
    square[0, :] = 1.0  # the top band lies entirely in padding
    mass, kept = crop_and_resample(square, padding, (7, 14))
    assert kept == pytest.approx(0.0)
    assert normalise(mass) is None


def test_resampling_preserves_mass_inside_the_image():
    rng = np.random.default_rng(0)
    square = rng.random((24, 24))
    _mass, kept = crop_and_resample(square, SquarePadding(336, 336), (14, 14))
    assert kept == pytest.approx(square.sum())


def test_pad_to_square_centres_the_image_with_the_mean_colour():
    image = Image.new("RGB", (100, 50), (0, 0, 0))
    square, padding = pad_to_square(image, (1.0, 0.5, 0.0))
    assert square.size == (100, 100)
    assert (padding.left, padding.top) == (0, 25)
    assert square.getpixel((50, 10)) == (255, 128, 0)
    assert square.getpixel((50, 50)) == (0, 0, 0)


def test_boxes_are_drawn_on_a_copy():
    image = Image.new("RGB", (100, 100))
    drawn = draw_boxes(image, [Box(xyxy=(10, 10, 50, 50), label="x")])
    assert drawn.getpixel((10, 30)) == (255, 0, 0)
    assert image.getpixel((10, 30)) == (0, 0, 0)
