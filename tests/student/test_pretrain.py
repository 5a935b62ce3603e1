"""The pretrained backbone: its labels, its augmentation, and a tiny run that writes a loadable checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import ViTForImageClassification
from typer.testing import CliRunner

from services.cli import app
from services.student.model import build_student, freeze_original
from services.student.preprocessing import normalisation_for
from services.student.pretrain import LABELS, PretrainConfig, dihedral, draw_images, labelled_batch, pretrain_backbone
from shared.synth import BACKGROUNDS, CLASSES, UNIFORM_CORRELATION, make_sample


def test_labels_name_the_shape_and_the_texture_each_image_really_has():
    pixels, labels = labelled_batch("train", 0, 32, data_seed=7, image_size=64)
    assert pixels.shape == (32, 64, 64, 3) and pixels.dtype == np.uint8
    for index, label in enumerate(labels):
        sample = make_sample("train", index % 4, index // 4, seed=7, correlation=UNIFORM_CORRELATION)
        assert LABELS[label] == f"{sample.cls}/{sample.background}"
        assert label // len(BACKGROUNDS) == CLASSES.index(sample.cls)
        assert np.array_equal(pixels[index], sample.image)


def test_drawing_in_processes_gives_the_same_images():
    one = draw_images("train", 600, data_seed=3, image_size=32, workers=1)
    two = draw_images("train", 600, data_seed=3, image_size=32, workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])


def test_dihedral_moves_pixels_without_changing_them():
    pixels = np.random.default_rng(0).integers(0, 255, size=(16, 8, 8, 3), dtype=np.uint8)
    out = dihedral(pixels, np.random.default_rng(1))
    assert out.shape == pixels.shape and not np.array_equal(out, pixels)
    for before, after in zip(pixels, out, strict=True):
        assert sorted(before.reshape(-1, 3).tolist()) == sorted(after.reshape(-1, 3).tolist())


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="images"):
        PretrainConfig(images=0)
    with pytest.raises(ValueError, match="model"):
        PretrainConfig(model="vit-huge")


def test_a_tiny_run_writes_a_backbone_the_student_loads_frozen(tmp_path):
    config = PretrainConfig(images=96, epochs=2, batch_size=32, eval_images=32, eval_every=2, workers=1)
    steps = []
    report = pretrain_backbone(tmp_path / "vit", config, on_step=lambda s, loss, scores: steps.append((s, scores)))
    assert [s for s, _ in steps] == list(range(1, config.steps + 1)) == list(range(1, 7))
    assert [s for s, scores in steps if scores] == [2, 4, 6]
    assert set(report.evaluation) >= {"pair", "shape", "texture"}
    record = json.loads((tmp_path / "vit" / "lfi_pretrain.json").read_text())
    assert record["config"]["images"] == 96 and record["seconds"] > 0
    assert normalisation_for(str(tmp_path / "vit")).mean == (0.5, 0.5, 0.5)
    student = build_student("vit-tiny", 4, "full", init=str(tmp_path / "vit"))
    trainable = freeze_original(student)
    new_parts = ("interaction_q_proj", ".gate.", "classifier.")
    assert trainable and all(any(part in n for part in new_parts) for n in trainable)
    saved = dict(ViTForImageClassification.from_pretrained(tmp_path / "vit").named_parameters())
    loaded = dict(student.named_parameters())
    assert all(torch.equal(loaded[n], p) for n, p in saved.items() if not n.startswith("classifier"))


def test_the_command_trains_and_refuses_bad_values(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["student", "pretrain", str(tmp_path / "x"), "--images", "0"])
    assert bad.exit_code == 2 and "images" in bad.output
    (tmp_path / "a-file").write_text("x")
    bad = runner.invoke(app, ["student", "pretrain", str(tmp_path / "a-file"), "--images", "64"])
    assert bad.exit_code == 2 and "give a folder" in bad.output
    ok = runner.invoke(app, ["student", "pretrain", str(tmp_path / "vit"), "--images", "64", "--epochs", "1",
                             "--batch-size", "32", "--eval-images", "16", "--eval-every", "1"])
    assert ok.exit_code == 0, ok.output
    assert all((tmp_path / "vit" / name).is_file() for name in ("model.safetensors", "preprocessor_config.json"))
