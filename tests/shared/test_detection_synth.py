"""The synthetic detection set: COCO layout, determinism, boxes and masks that agree, the texture shift."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.student.data_cli import data_app
from shared.coco import discover_coco, rle_to_mask
from shared.detection_synth import IN_DOMAIN, SHIFTED, generate_detection, make_detection_sample
from shared.synth import CLASSES


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("detection") / "data"
    generate_detection(out, n_train=12, n_val=4, n_shifted=5, max_objects=3, seed=2)
    return out


def test_layout_reads_as_coco_with_every_split(dataset: Path) -> None:
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["format"] == "lfi-synth-detection" and meta["classes"] == list(CLASSES)
    data = discover_coco(dataset, ["shifted"])
    assert (len(data.train), len(data.val), len(data.heldout["shifted"])) == (12, 4, 5)
    assert data.category_names == {1: "circle", 2: "square", 3: "triangle", 4: "cross"}
    assert all(1 <= len(image.objects) <= 3 for image in data.train.images)
    assert sum(meta["counts"][s]["objects"] for s in ("train", "val", "shifted")) == sum(
        len(image.objects) for split in (data.train, data.val, data.heldout["shifted"]) for image in split.images)


def test_boxes_are_tight_around_masks_that_never_overlap(dataset: Path) -> None:
    data = discover_coco(dataset, ["shifted"])
    for image in data.train.images + data.heldout["shifted"].images:
        assert Image.open(image.path).size == (image.width, image.height) == (64, 64)
        covered = np.zeros((64, 64), bool)
        for item in image.objects:
            mask = rle_to_mask(item.segmentation)
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            x, y, w, h = item.bbox
            assert (x, y, x + w, y + h) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
            assert item.area == mask.sum() > 0 and not (covered & mask).any()
            covered |= mask


def test_same_arguments_same_bytes_and_the_shift_changes_only_the_textures(tmp_path: Path) -> None:
    generate_detection(tmp_path / "a", n_train=3, n_val=0, n_shifted=0, seed=5)
    generate_detection(tmp_path / "b", n_train=3, n_val=0, n_shifted=0, seed=5)
    for name in ("train/000002.png", "annotations/instances_train.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not (tmp_path / "a" / "annotations" / "instances_val.json").exists()
    assert set(IN_DOMAIN).isdisjoint(SHIFTED)
    image, objects = make_detection_sample("shifted", 0, seed=5)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and objects


def test_cli_writes_the_detection_set_and_refuses_bad_arguments(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(data_app, ["synth", str(tmp_path / "d"), "--task", "detection", "--n", "3", "--val", "1",
                                      "--shifted", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["counts"]["train"]["images"] == 3
    assert len(discover_coco(tmp_path / "d").train) == 3
    bad = runner.invoke(data_app, ["synth", str(tmp_path / "e"), "--task", "detection", "--max-objects", "0"])
    assert bad.exit_code == 2 and "max_objects must be >= 1" in bad.output
    wrong = runner.invoke(data_app, ["synth", str(tmp_path / "f"), "--task", "segmentation"])
    assert wrong.exit_code == 2 and "--task must be classification or detection" in wrong.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    taken = runner.invoke(data_app, ["synth", str(tmp_path / "other"), "--task", "detection", "--n", "1"])
    assert taken.exit_code == 2 and "not empty" in taken.output
