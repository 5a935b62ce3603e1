"""`lfi teacher demo`'s pictures: each image, its map over it with a colour bar, and one page of them all."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from services.teacher.engine.overlay import overlay
from services.teacher.tiny.demo import VIEW_SCALE, run_demo


def test_the_demo_writes_overlays_with_their_colour_bar_and_an_index_page(tiny_dir, tmp_path):
    rows = run_demo(str(tiny_dir), tmp_path, n_images=2)
    assert [r["image"] for r in json.loads((tmp_path / "results.json").read_text())] == [r["image"] for r in rows]
    page = (tmp_path / "index.html").read_text()
    for row in rows:
        image = Image.open(tmp_path / f"{row['image']}.png")
        pictured = Image.open(tmp_path / f"{row['image']}-map.png").convert("RGB")
        values = np.load(tmp_path / f"{row['image']}-map.npy")
        assert image.width == 64 * VIEW_SCALE and pictured.height == image.height
        assert pictured.width > image.width + 20  # the colour bar beside the overlay
        left = np.asarray(pictured)[:, : image.width]
        assert np.array_equal(left, np.asarray(overlay(image, values)))  # the overlay, as the pure function draws it
        assert f'src="{row["image"]}-map.png"' in page and row["truth"] in page
