"""Detection batches, COCO mAP and the trainer: a few steps on the synthetic set with the oracle maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from services.student.detection.data import DetectionBatchBuilder, targets
from services.student.detection.evaluate import coco_map, to_coco_boxes
from services.student.detection.oracle import InstanceMaskMaps
from services.student.detection.trainer import DetectionConfig, DetectionTrainer
from shared.coco import discover_coco
from shared.detection_synth import generate_detection
from shared.job_spec import JobSpec


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_detection(root, n_train=8, n_val=4, n_shifted=4, max_objects=2, seed=1)
    return root


def _wide_set(root: Path) -> Path:
    """One 40x20 image, one object in its right half: exercises the letterbox and the flip."""
    (root / "train").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(root / "train" / "a.png")
    (root / "annotations" / "instances_train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [30, 0, 10, 10], "iscrowd": 0}],
        "categories": [{"id": 7, "name": "thing"}]}))
    return root


def test_letterboxed_batches_carry_detr_targets_and_each_objects_map_on_the_memory_grid(tmp_path: Path) -> None:
    data = discover_coco(_wide_set(tmp_path))
    builder = DetectionBatchBuilder(data.train, category_index={7: 0}, category_names={7: "thing"}, image_size=64,
                                    grid=(8, 8), batch_size=1, seed=0, augment=False,
                                    map_source=InstanceMaskMaps(data))
    batch = builder.build(0, 0)
    assert batch.pixel_values.shape == (1, 3, 64, 64) and batch.pixel_mask.shape == (1, 64, 64)
    assert batch.pixel_mask[0, :32].all() and not batch.pixel_mask[0, 32:].any()  # 40x20 -> 64x32, top-left
    torch.testing.assert_close(batch.labels[0]["boxes"], torch.tensor([[0.875, 0.25, 0.25, 0.5]]))
    grid = batch.maps[0].view(8, 8)
    # the object covers image x 30..40, y 0..10 -> canvas x 48..64, y 0..16 -> cells x 6..7, y 0..1
    assert torch.allclose(grid[:2, 6:].sum(), torch.tensor(1.0)) and grid[2:].sum() == 0
    flipped = DetectionBatchBuilder(data.train, category_index={7: 0}, category_names={7: "thing"}, image_size=64,
                                    grid=(8, 8), batch_size=1, seed=0, augment=True, map_source=InstanceMaskMaps(data))
    flip_batch = next(b for b in (flipped.build(epoch, 0) for epoch in range(20)) if b.flipped[0])
    torch.testing.assert_close(flip_batch.labels[0]["boxes"], torch.tensor([[0.125, 0.25, 0.25, 0.5]]))
    assert torch.allclose(flip_batch.maps[0].view(8, 8)[:2, :2].sum(), torch.tensor(1.0))


def test_an_unreadable_image_leaves_its_batch_is_counted_and_named_once(tmp_path: Path, caplog) -> None:
    root = _wide_set(tmp_path)
    (root / "train" / "b.png").write_bytes(b"not an image")
    instances = root / "annotations" / "instances_train.json"
    document = json.loads(instances.read_text())
    document["images"].append({"id": 2, "file_name": "b.png", "width": 40, "height": 20})
    instances.write_text(json.dumps(document))
    data = discover_coco(root)
    builder = DetectionBatchBuilder(data.train, category_index={7: 0}, category_names={7: "thing"}, image_size=64,
                                    grid=(8, 8), batch_size=2, seed=0, augment=False,
                                    map_source=InstanceMaskMaps(data))
    with caplog.at_level("WARNING"):
        batches = [builder.build(epoch, 0) for epoch in range(2)]
    assert all(b.skipped == 1 and [i.rel for i in b.images] == ["train/a.png"] for b in batches)
    assert all(b.pixel_values.shape[0] == len(b.labels) == len(b.maps) == 1 for b in batches)
    assert builder.unreadable == {"train/b.png"}
    assert len([r for r in caplog.records if "unreadable image train/b.png" in r.getMessage()]) == 1  # warned once


def test_crowds_and_unknown_categories_are_not_training_targets(shapes: Path) -> None:
    image = discover_coco(shapes).train.images[0]
    target, kept = targets(image, {1: 0, 2: 1, 3: 2, 4: 3}, flip=False)
    assert len(kept) == len(image.objects) == len(target["class_labels"]) == len(target["boxes"])
    _, none = targets(image, {}, flip=False)
    assert none == []


def test_coco_map_is_one_for_the_truth_and_zero_for_nothing(shapes: Path) -> None:
    split = discover_coco(shapes).val
    perfect = [{"image_id": image.image_id, "category_id": o.category_id, "bbox": list(o.bbox), "score": 1.0}
               for image in split.images for o in image.objects]
    result = coco_map(split, perfect)
    assert result["AP"] == result["AP50"] == 1.0 and result["APl"] is None  # no large object in 64 px images
    assert coco_map(split, [])["AP"] == 0.0
    shifted = [{**r, "bbox": [r["bbox"][0] + 30, r["bbox"][1], r["bbox"][2], r["bbox"][3]]} for r in perfect]
    assert coco_map(split, shifted)["AP"] < 0.2
    np.testing.assert_allclose(to_coco_boxes(np.array([[0.5, 0.5, 0.5, 0.25]]), 64, 32), [[16, 12, 32, 8]])


@pytest.mark.parametrize("student", ["idetr", "detr"])
def test_a_short_run_reports_map_per_epoch_and_resumes_where_it_stopped(shapes: Path, tmp_path: Path,
                                                                        student: str) -> None:
    torch.set_num_threads(1)
    data = discover_coco(shapes, ["shifted"])
    spec = JobSpec(dataset="shapes", task="detection", student=student, epochs=2, batch_size=4, lr=1e-3)
    events: list[dict] = []
    trainer = DetectionTrainer(DetectionConfig.from_spec(spec, max_steps=3), data, tmp_path,
                               map_source=InstanceMaskMaps(data), progress=events.append)
    assert trainer.run().status == "stopped" and trainer.global_step == 3
    epoch = next(e for e in events if e["type"] == "epoch")
    assert set(epoch["val_map"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and "shifted" in epoch["heldout_map"]
    assert (epoch["align_loss"] > 0) == (student == "idetr")
    samples = json.loads(Path(next(e for e in events if e["type"] == "samples")["path"]).read_text())
    assert samples["grid"] == [8, 8] and len(samples["samples"]) == 4
    resumed = DetectionTrainer(DetectionConfig.from_spec(spec), data, tmp_path, map_source=InstanceMaskMaps(data))
    result = resumed.run()
    assert result.status == "completed" and result.global_step == 4 and [h["epoch"] for h in result.history] == [1, 2]


def test_a_spec_that_aligns_needs_a_map_source(shapes: Path, tmp_path: Path) -> None:
    spec = JobSpec(dataset="shapes", task="detection", student="idetr", align_layers=[5])
    with pytest.raises(ValueError, match="align_layers"):
        DetectionTrainer(DetectionConfig.from_spec(spec), discover_coco(shapes), tmp_path)
    with pytest.raises(ValueError, match="give it a map source"):
        DetectionTrainer(DetectionConfig.from_spec(spec, align_layers=None), discover_coco(shapes), tmp_path)
