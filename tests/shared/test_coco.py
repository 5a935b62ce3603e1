"""The COCO-format reader on hand-written fixtures: the COCO layout, the VOC-in-COCO layout, bad input, RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.coco import CocoFormatError, check_coco_layout, discover_coco, mask_to_rle, read_split, rle_to_mask


def _write(root: Path, split: str, document: dict) -> None:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


def _image(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}]  # COCO ids are neither 0-based nor dense


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """COCO 2017 naming: train2017/ + instances_train2017.json, val2017/ likewise; a crowd and an empty box."""
    _image(tmp_path / "train2017" / "000000000001.jpg")
    _image(tmp_path / "train2017" / "000000000002.jpg")
    _write(tmp_path, "train2017", {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 40, "height": 30},
                   {"id": 2, "file_name": "000000000002.jpg", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [1, 2, 10, 8], "area": 80, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 20]},  # empty: COCO has a few
        ],
        "categories": CATEGORIES})
    _image(tmp_path / "val2017" / "000000000009.jpg")
    _write(tmp_path, "val2017", {"images": [{"id": 9, "file_name": "000000000009.jpg", "width": 40, "height": 30}],
                                 "annotations": [], "categories": CATEGORIES})
    return tmp_path


def test_the_coco_2017_layout_loads_with_crowds_kept_and_empty_boxes_dropped(coco_root: Path) -> None:
    data = discover_coco(coco_root)
    assert data.train.name == "train2017" and data.val is not None and data.val.name == "val2017"
    assert data.category_names == {18: "dog", 3: "car"}
    first, second = data.train.images
    assert first.path == coco_root / "train2017" / "000000000001.jpg" and first.rel == "train2017/000000000001.jpg"
    assert [(o.category_id, o.bbox, o.iscrowd) for o in first.objects] == [(18, (1.0, 2.0, 10.0, 8.0), False),
                                                                            (3, (5.0, 5.0, 20.0, 20.0), True)]
    assert second.objects == () and (first.width, first.height) == (40, 30)
    assert len(data.val) == 1 and data.heldout == {}


def test_voc_in_coco_file_names_relative_to_the_root_load_the_same_way(tmp_path: Path) -> None:
    _image(tmp_path / "VOC2007" / "JPEGImages" / "000005.jpg")
    _write(tmp_path, "train", {
        "images": [{"id": 5, "file_name": "VOC2007/JPEGImages/000005.jpg", "width": 40, "height": 30}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 4, 4]}],  # no area, no iscrowd
        "categories": [{"id": 1, "name": "person"}]})
    _write(tmp_path, "test", {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]})
    data = discover_coco(tmp_path, ["test"])
    image = data.train.images[0]
    assert image.path == tmp_path / "VOC2007" / "JPEGImages" / "000005.jpg" and image.path.exists()
    assert image.objects[0].area == 16.0 and not image.objects[0].iscrowd
    assert data.val is None and list(data.heldout) == ["test"]


def test_bad_folders_and_files_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match="lfi data synth DIR --task detection"):
        discover_coco(tmp_path)
    with pytest.raises(CocoFormatError, match=r"instances_train\.json"):
        check_coco_layout(tmp_path, [])
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(CocoFormatError, match="not readable JSON"):
        read_split(tmp_path, "train")
    _write(tmp_path, "train", {"images": "nope", "categories": []})
    with pytest.raises(CocoFormatError, match="'images' and 'categories' lists"):
        read_split(tmp_path, "train")
    _write(tmp_path, "train", {"images": [{"id": 1}], "categories": []})
    with pytest.raises(CocoFormatError, match="id, file_name, width and height"):
        read_split(tmp_path, "train")
    _write(tmp_path, "train", {"images": [], "annotations": [{"image_id": 1, "bbox": [1, 2]}], "categories": []})
    with pytest.raises(CocoFormatError, match=r"bbox \[x, y, w, h\] and category_id"):
        read_split(tmp_path, "train")
    _write(tmp_path, "train", {"images": [], "annotations": [], "categories": []})
    with pytest.raises(CocoFormatError, match="no categories or no images"):
        discover_coco(tmp_path)
    with pytest.raises(CocoFormatError, match="eval domain 'other'"):
        check_coco_layout(tmp_path, ["other"])


@pytest.mark.parametrize("seed", range(5))
def test_uncompressed_rle_round_trips_and_matches_pycocotools(seed: int) -> None:
    from pycocotools import mask as coco_mask

    mask = np.random.default_rng(seed).random((7, 5)) > 0.5
    mask[0, 0] = bool(seed % 2)  # runs start with zeros: a leading one needs an empty first run
    rle = mask_to_rle(mask)
    assert rle["size"] == [7, 5] and sum(rle["counts"]) == 35
    assert (rle_to_mask(rle) == mask).all()
    compressed = coco_mask.frPyObjects(rle, 7, 5)
    assert (coco_mask.decode(compressed).astype(bool) == mask).all()
    assert int(coco_mask.area(compressed)) == int(mask.sum())
