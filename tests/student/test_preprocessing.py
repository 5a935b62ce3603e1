"""Pixels are normalised as the init checkpoint's image processor says; 0.5/0.5 only when nothing says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import ViTForImageClassification, ViTImageProcessor

from services.student.data import discover
from services.student.loader import BatchBuilder, denormalise, normalise
from services.student.model_config import student_config
from services.student.preprocessing import DEFAULT, Normalisation, normalisation_for
from services.student.trainer import TrainConfig, Trainer
from shared.job_spec import JobSpec

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _checkpoint(folder, **processor):
    torch.manual_seed(0)
    ViTForImageClassification(student_config("vit-tiny", 4, "off")).save_pretrained(folder)
    if processor:
        ViTImageProcessor(**processor).save_pretrained(folder)
    return folder


def test_the_checkpoints_own_mean_and_std_are_used(tmp_path):
    folder = _checkpoint(tmp_path / "clip-like", image_mean=CLIP_MEAN, image_std=CLIP_STD)
    assert normalisation_for(str(folder)) == Normalisation(tuple(CLIP_MEAN), tuple(CLIP_STD))
    plain = _checkpoint(tmp_path / "no-normalize", do_normalize=False)
    assert normalisation_for(str(plain)) == Normalisation((0.0,) * 3, (1.0,) * 3)


def test_half_and_half_only_when_nothing_says_otherwise(tmp_path):
    assert normalisation_for("scratch") == DEFAULT == Normalisation((0.5,) * 3, (0.5,) * 3)
    assert normalisation_for(str(_checkpoint(tmp_path / "bare"))) == DEFAULT  # no preprocessor_config.json


@pytest.mark.parametrize("processor", [{"image_mean": [0.5, 0.5]}, {"image_std": [0.2, 0.0, 0.2]},
                                       {"image_mean": "imagenet"}])
def test_a_broken_config_is_an_error_naming_the_file(tmp_path, processor):
    folder = _checkpoint(tmp_path / "broken")
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match=r"preprocessor_config\.json"):
        normalisation_for(str(folder))


def test_normalise_is_per_channel_and_denormalise_inverts_it():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    clip = Normalisation(tuple(CLIP_MEAN), tuple(CLIP_STD))
    values = normalise(pixels, clip)
    expected = (pixels[0, 1, 2, 2] / 255 - CLIP_MEAN[2]) / CLIP_STD[2]
    assert values.shape == (2, 3, 4, 4) and values[0, 2, 1, 2].item() == pytest.approx(expected, abs=1e-5)
    assert np.array_equal(denormalise(values, clip), pixels)


def test_the_trainer_feeds_the_init_checkpoints_normalisation_and_saves_it(synth_small, tmp_path):
    folder = _checkpoint(tmp_path / "vit", image_mean=CLIP_MEAN, image_std=CLIP_STD)
    config = TrainConfig.from_spec(JobSpec(dataset="synth", student="vit", init=str(folder), epochs=1,
                                           batch_size=8), step_checkpoints=False, max_steps=1)
    trainer = Trainer(config, discover(synth_small, ["shifted"]), tmp_path / "run")
    builder = trainer.train_batches
    assert builder.normalisation.mean == tuple(CLIP_MEAN)
    batch = builder.build(0, 0)
    reference = BatchBuilder(builder.images, image_size=64, grid=(8, 8), batch_size=8, seed=builder.seed,
                             augment=True).build(0, 0)  # the same crops, normalised with 0.5/0.5
    assert torch.allclose((batch.pixel_values * torch.tensor(CLIP_STD).view(1, 3, 1, 1)
                           + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)), reference.pixel_values * 0.5 + 0.5, atol=1e-5)
    saved = trainer.checkpoint()
    assert ViTImageProcessor.from_pretrained(saved).image_mean == pytest.approx(CLIP_MEAN)
    assert normalisation_for(str(saved)).std == pytest.approx(tuple(CLIP_STD))  # a run used as init reads it back
