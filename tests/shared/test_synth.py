"""The synthetic shape-on-texture data set: layout, determinism, masks and the background knob."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from services.student.data_cli import data_app
from shared.synth import BACKGROUNDS, CLASSES, SPLITS, generate, make_sample, read_annotations

SMALL = {"n_train_per_class": 6, "n_val_per_class": 3, "n_shifted_per_class": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, **SMALL, seed=3)
    return out


def _own_fraction(records: list[dict], split: str) -> float:
    rows = [r for r in records if r["split"] == split]
    return sum(BACKGROUNDS[CLASSES.index(r["class"])] == r["background"] for r in rows) / len(rows)


def test_layout_counts_and_meta(dataset: Path) -> None:
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["format"] == "lfi-synth" and meta["version"] == 1
    assert meta["classes"] == list(CLASSES) == ["circle", "square", "triangle", "cross"]
    assert meta["backgrounds"] == list(BACKGROUNDS) == ["stripes", "dots", "checker", "noise"]
    assert meta["counts"] == {"train": 24, "val": 12, "shifted": 16}
    assert (meta["seed"], meta["image_size"], meta["correlation"]) == (3, 64, 0.9)

    per_split = {"train": 6, "val": 3, "shifted": 4}
    for split in SPLITS:
        assert sorted(p.name for p in (dataset / split).iterdir()) == sorted(CLASSES)
        for cls in CLASSES:
            names = sorted(p.name for p in (dataset / split / cls).iterdir())
            assert names == [f"{cls}-{i:05d}.png" for i in range(per_split[split])]
            assert sorted(p.name for p in (dataset / "masks" / split / cls).iterdir()) == names

    records = read_annotations(dataset)
    assert len(records) == 52
    for record in records:
        assert set(record) == {"split", "path", "mask", "class", "background", "bbox"}
        assert record["path"] == f"{record['split']}/{record['class']}/{Path(record['path']).name}"
        assert record["mask"] == f"masks/{record['path']}"
        assert record["background"] in BACKGROUNDS
    image = Image.open(dataset / records[0]["path"])
    assert (image.mode, image.size) == ("RGB", (64, 64))


def test_same_arguments_give_identical_bytes(tmp_path: Path, dataset: Path) -> None:
    again = tmp_path / "again"
    generate(again, **SMALL, seed=3)
    assert (again / "annotations.jsonl").read_bytes() == (dataset / "annotations.jsonl").read_bytes()
    assert (again / "meta.json").read_bytes() == (dataset / "meta.json").read_bytes()
    for record in read_annotations(dataset)[::5]:
        for key in ("path", "mask"):
            assert (again / record[key]).read_bytes() == (dataset / record[key]).read_bytes()
    # A different seed changes the images; a different count does not change the shared ones
    # (each image is seeded from its own identity, not from generation order).
    other = tmp_path / "other"
    generate(other, n_train_per_class=2, n_val_per_class=0, n_shifted_per_class=0, seed=4)
    first = "train/circle/circle-00000.png"
    assert (other / first).read_bytes() != (dataset / first).read_bytes()
    fewer = tmp_path / "fewer"
    generate(fewer, n_train_per_class=2, n_val_per_class=0, n_shifted_per_class=0, seed=3)
    shared = "train/cross/cross-00001.png"
    assert (fewer / shared).read_bytes() == (dataset / shared).read_bytes()
    assert not (fewer / "val").exists()


def test_masks_are_binary_match_the_bbox_and_stand_out(dataset: Path) -> None:
    for record in read_annotations(dataset):
        mask_image = Image.open(dataset / record["mask"])
        assert mask_image.mode == "L"
        mask = np.asarray(mask_image)
        assert set(np.unique(mask)) <= {0, 255}
        on = mask == 255
        area = int(on.sum())
        assert area > 0
        ys, xs = np.nonzero(on)
        x0, y0, x1, y1 = record["bbox"]
        assert [x0, y0, x1, y1] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        side = max(x1 - x0, y1 - y0)
        # Shapes span 25-55% of the side; a 25°-rotated square's box is up to 1.33x its side.
        assert 0.2 * 64 <= side <= 0.75 * 64
        # Circles fill ~79% of their box, rotated crosses and triangles the least (~40%).
        assert 0.3 <= area / ((x1 - x0) * (y1 - y0)) <= 1.0
        pixels = np.asarray(Image.open(dataset / record["path"]), dtype=np.float64)
        assert np.linalg.norm(pixels[on].mean(0) - pixels[~on].mean(0)) > 60  # the shape is visible


def test_correlation_controls_the_background_shortcut(tmp_path: Path, dataset: Path) -> None:
    full = tmp_path / "full"
    generate(full, n_train_per_class=10, n_val_per_class=2, n_shifted_per_class=10, correlation=1.0)
    records = read_annotations(full)
    assert _own_fraction(records, "train") == 1.0 and _own_fraction(records, "val") == 1.0
    assert _own_fraction(records, "shifted") == 0.0
    assert _own_fraction(read_annotations(dataset), "shifted") == 0.0

    weak = tmp_path / "weak"
    report = generate(weak, n_train_per_class=30, n_val_per_class=0, n_shifted_per_class=0, correlation=0.25)
    fraction = _own_fraction(read_annotations(weak), "train")
    assert fraction == pytest.approx(report.own_background["train"])
    assert 0.1 <= fraction <= 0.45
    # Off-class backgrounds are spread over all the other textures, not one fixed substitute.
    off = {r["background"] for r in read_annotations(weak) if r["class"] == "circle" and r["background"] != "stripes"}
    assert off == {"dots", "checker", "noise"}


def test_make_sample_is_pure_and_matches_the_files(dataset: Path) -> None:
    a = make_sample("val", 2, 1, seed=3)
    b = make_sample("val", 2, 1, seed=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(np.asarray(Image.open(dataset / "val/triangle/triangle-00001.png")), a.image)
    assert a.cls == "triangle" and a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    assert make_sample("train", 0, 0, image_size=16).mask.any()  # the smallest size still draws a shape


def test_progress_and_rerun_into_the_same_folder(tmp_path: Path) -> None:
    out = tmp_path / "data"
    seen: list[int] = []
    report = generate(out, n_train_per_class=3, n_val_per_class=1, n_shifted_per_class=1, progress=seen.append)
    assert sum(seen) == report.images == 20
    # A smaller rerun replaces the earlier output and leaves no stale images behind.
    generate(out, n_train_per_class=1, n_val_per_class=0, n_shifted_per_class=0)
    assert len(list(out.rglob("*.png"))) == 2 * len(CLASSES)
    assert len(read_annotations(out)) == len(CLASSES)


def test_refuses_a_foreign_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        generate(tmp_path, n_train_per_class=1)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"correlation": 1.5}, "correlation"),
    ({"correlation": -0.1}, "correlation"),
    ({"n_train_per_class": 0}, "n_train_per_class"),
    ({"n_val_per_class": -1}, "n_val_per_class"),
    ({"n_shifted_per_class": -2}, "n_shifted_per_class"),
    ({"image_size": 8}, "image_size"),
    ({"seed": -1}, "seed"),
    ({"n_train_per_class": 2.5}, "integer"),
])
def test_invalid_arguments_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()  # nothing written before validation


def test_cli_synth_writes_and_summarises(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(data_app, ["synth", str(out), "--n", "2", "--val", "1", "--shifted", "1",
                                      "--correlation", "1.0", "--seed", "5", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 16 and summary["counts"] == {"train": 8, "val": 4, "shifted": 4}
    assert summary["own_background"]["train"] == 1.0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["seed"], meta["image_size"], meta["correlation"]) == (5, 32, 1.0)
    assert Image.open(out / "train/square/square-00001.png").size == (32, 32)

    bad = runner.invoke(data_app, ["synth", str(tmp_path / "bad"), "--correlation", "2"])
    assert bad.exit_code == 2 and "correlation" in bad.output
    assert "Traceback" not in bad.output
