"""Batches: which images get an alignment target, and why the others do not (counted per reason)."""

from __future__ import annotations

import numpy as np
import pytest

from services.student.data import discover
from services.student.loader import BatchBuilder
from services.student.maps import MaskMaps
from services.student.trainer import TrainConfig, Trainer
from services.student.transforms import random_resized_view
from shared.job_spec import JobSpec


class ByClassMaps:
    """A map source whose answer depends on the class folder: circle has no map, cross a degenerate one
    (the all-zero map a source hands on for a teacher's `degenerate: true`), the rest a map with all its
    mass in the top-left corner cell."""

    def fetch(self, requests):
        out = []
        for request in requests:
            cls = request.sample.rel.split("/")[1]
            if cls == "circle":
                out.append(None)
            elif cls == "cross":
                out.append(np.zeros((8, 8), np.float32))
            else:
                corner = np.zeros((8, 8), np.float32)
                corner[0, 0] = 1.0
                out.append(corner)
        return out


def _builder(root, **options):
    data = discover(root, ["shifted"])
    return BatchBuilder(data.train, image_size=64, grid=(8, 8), batch_size=32, seed=0, map_source=ByClassMaps(),
                        label_word=data.label_word, **options)


def test_missing_degenerate_and_weak_crop_maps_have_no_target_and_are_counted(synth_small):
    batch = _builder(synth_small, augment=False).build(0, 0)
    assert batch.map_counts == {"missing": 8, "degenerate": 8, "weak_crop": 0}
    assert int(batch.map_valid.sum()) == 16 and not batch.maps[~batch.map_valid].any()
    assert np.allclose(batch.maps[batch.map_valid].sum(dim=1).numpy(), 1.0)
    # random crops: every one that leaves out the corner cell (x0 or y0 past 8 px) keeps none of its mass
    builder = _builder(synth_small, augment=True, min_crop_mass=0.25)
    corner_maps = [i for i, s in enumerate(builder.images.samples) if s.rel.split("/")[1] in {"square", "triangle"}]
    weak = cut_off = 0
    for epoch in range(3):
        batch = builder.build(epoch, 0)
        weak += batch.map_counts["weak_crop"]
        assert int(batch.map_valid.sum()) == 16 - batch.map_counts["weak_crop"]
        boxes = [random_resized_view(np.random.default_rng([0, epoch, i]), 64, 64).box for i in corner_maps]
        cut_off += sum(x0 >= 8 or y0 >= 8 for x0, y0, _, _ in boxes)
    assert weak >= cut_off > 0


def test_degenerate_maps_add_no_alignment_term_and_are_counted_per_epoch(synth_small, tmp_path):
    class AllDegenerate:
        def fetch(self, requests):
            return [np.zeros((8, 8), np.float32) for _ in requests]

    spec = JobSpec(dataset="synth", epochs=2, batch_size=16, lr=2e-3)
    config = TrainConfig.from_spec(spec, step_checkpoints=False)
    data = discover(synth_small, ["shifted"])
    result = Trainer(config, data, tmp_path / "degenerate", map_source=AllDegenerate()).run()
    assert [e["maps_degenerate"] for e in result.history] == [32, 32]
    assert all(e["align_loss"] == 0 for e in result.history)
    one_epoch = TrainConfig.from_spec(spec, step_checkpoints=False, max_steps=2)
    masks = Trainer(one_epoch, data, tmp_path / "masks", map_source=MaskMaps(synth_small)).run()
    assert len(masks.history) == 1  # max_steps=2: the first epoch only
    assert all(e["maps_degenerate"] == 0 and e["align_loss"] > 0 for e in masks.history)
    assert masks.history[0]["maps_missing"] == 0 and "maps_weak_crop" in masks.history[0]


@pytest.mark.parametrize("floor", [0.0, 1.0])
def test_the_crop_floor_comes_from_the_spec(synth_small, tmp_path, floor):
    config = TrainConfig.from_spec(JobSpec(dataset="synth", min_crop_mass=floor), step_checkpoints=False)
    trainer = Trainer(config, discover(synth_small, ["shifted"]), tmp_path, map_source=MaskMaps(synth_small))
    assert trainer.train_batches.min_crop_mass == floor
