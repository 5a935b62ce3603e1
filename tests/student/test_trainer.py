"""The trainer on the synthetic set: learning, freezing, exact resume, unreadable images."""

from __future__ import annotations

import shutil

import pytest
import torch
from pydantic import ValidationError
from transformers import ViTForImageClassification

from services.student.data import discover
from services.student.maps import MaskMaps
from services.student.model_config import student_config
from services.student.trainer import TrainConfig, Trainer
from shared.job_spec import JobSpec


def _config(root, **overrides) -> TrainConfig:
    """Short runs checkpoint at epoch ends only, unless a test asks for step checkpoints."""
    overrides.setdefault("step_checkpoints", "checkpoint_every" in overrides)
    return TrainConfig.from_spec(JobSpec(dataset=root.name), **overrides)


def _trainer(root, run_dir, **overrides) -> Trainer:
    config = _config(root, **{"epochs": 3, "batch_size": 8, "lr": 2e-3, **overrides})
    return Trainer(config, discover(root, ["shifted"]), run_dir, map_source=MaskMaps(root))


def test_task_and_alignment_losses_fall(synth_small, tmp_path):
    events = []
    trainer = Trainer(_config(synth_small, epochs=25, batch_size=16, lr=2e-3, augment=False),
                      discover(synth_small, ["shifted"]), tmp_path, map_source=MaskMaps(synth_small),
                      progress=events.append)
    result = trainer.run()
    first, last = result.history[0], result.history[-1]
    assert result.status == "completed" and len(result.history) == 25
    assert last["task_loss"] < 0.6 * first["task_loss"]
    assert last["align_loss"] < 0.7 * first["align_loss"]
    epoch_events = [e for e in events if e["type"] == "epoch"]
    assert [e["epoch"] for e in epoch_events] == list(range(1, 26))
    assert set(epoch_events[-1]["heldout_top1"]) == {"shifted"}
    assert all(g is not None and 0 < g[0] < 1 for g in last["gates"])  # gate means per layer
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 50 and all(e["images_per_s"] > 0 and e["map_wait_s"] >= 0 for e in steps)


def test_frozen_parameters_stay_bit_identical(synth_small, tmp_path):
    torch.manual_seed(0)
    pretrained = tmp_path / "vit"
    ViTForImageClassification(student_config("vit-tiny", 4, "off")).save_pretrained(pretrained)
    trainer = _trainer(synth_small, tmp_path / "run", init=str(pretrained), epochs=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & changed
    assert any("interaction_q_proj" in n for n in changed) and any(n.startswith("classifier") for n in changed)


def test_resume_is_exact(synth_small, tmp_path):
    # 4 steps per epoch; N = 3: the resume point is mid-epoch and the run crosses an epoch boundary
    straight = _trainer(synth_small, tmp_path / "straight", checkpoint_every=3, max_steps=6)
    straight.run()
    half = _trainer(synth_small, tmp_path / "resumed", checkpoint_every=3, max_steps=3)
    half.run()
    assert half.global_step == 3
    resumed = _trainer(synth_small, tmp_path / "resumed", checkpoint_every=3, max_steps=6)
    events = []
    resumed.progress = events.append
    resumed.run()
    assert events[0]["type"] == "resumed" and events[0]["global_step"] == 3
    assert resumed.global_step == straight.global_step == 6
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6
    assert [h["task_loss"] for h in straight.history] == pytest.approx([h["task_loss"] for h in resumed.history],
                                                                       abs=1e-6)


def test_unreadable_images_are_skipped_and_counted(synth_small, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_small, root)
    broken = sorted((root / "train" / "circle").glob("*.png"))
    broken[0].write_bytes(broken[0].read_bytes()[:100])  # truncated
    broken[1].write_bytes(b"not an image")
    result = _trainer(root, tmp_path / "run", epochs=1).run()
    assert result.status == "completed"
    assert result.history[0]["unreadable"] == 2


def test_cancel_stops_at_the_next_step(synth_small, tmp_path):
    calls = []
    trainer = _trainer(synth_small, tmp_path, epochs=5)
    trainer.should_stop = lambda: len(calls) >= 2
    trainer.progress = lambda event: calls.append(event) if event["type"] == "step" else None
    assert trainer.run().status == "stopped"
    assert trainer.global_step == 2


def test_an_aligned_student_without_maps_is_refused(synth_small, tmp_path):
    with pytest.raises(ValueError, match="map source"):
        Trainer(_config(synth_small), discover(synth_small, ["shifted"]), tmp_path)


def test_a_checkpoint_pointer_left_dangling_by_a_crash_falls_back_to_the_newest_complete_one(synth_small, tmp_path):
    from services.student.checkpoint import latest_checkpoint

    _trainer(synth_small, tmp_path, checkpoint_every=2, max_steps=4).run()
    newest = latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step-99999999")  # renamed away mid-save
    assert latest_checkpoint(tmp_path) == newest
    resumed = _trainer(synth_small, tmp_path, checkpoint_every=2, max_steps=6)
    resumed.run()
    assert resumed.global_step == 6


def test_the_config_takes_the_specs_defaults_and_validates_overrides_like_the_spec():
    spec = JobSpec(dataset="synth")
    config = TrainConfig.from_spec(spec, align_rows="mean", ablation="no-gate", align_weight=5)
    assert config.spec.epochs == spec.epochs and config.spec.lr == spec.lr  # one home for the defaults
    assert (config.spec.align_rows, config.spec.ablation, config.spec.align_weight, config.mode) == \
        ("mean", "no-gate", 5, "no-gate")
    assert TrainConfig.from_spec(JobSpec(dataset="synth", student="vit")).aligned is False
    with pytest.raises(ValidationError):
        TrainConfig.from_spec(spec, ablation="no-such-ablation")
    with pytest.raises(TypeError):
        TrainConfig.from_spec(spec, no_such_field=1)


def test_the_shipped_backbone_is_an_init_whose_layers_stay_frozen(synth_small, tmp_path):
    from services.student.backbones import PRETRAINED_DIR

    trainer = _trainer(synth_small, tmp_path / "run", init="builtin:vit-tiny-synth", epochs=1)
    shipped = dict(ViTForImageClassification.from_pretrained(PRETRAINED_DIR / "vit-tiny-synth").named_parameters())
    trainer.run()
    params = dict(trainer.model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    assert frozen and all(torch.equal(params[n], shipped[n]) for n in frozen)
    assert {n for n, p in params.items() if p.requires_grad} >= {"classifier.weight", "classifier.bias"}


def test_freeze_false_fine_tunes_every_weight_of_a_pretrained_init(synth_small, tmp_path):
    torch.manual_seed(0)
    pretrained = tmp_path / "vit"
    ViTForImageClassification(student_config("vit-tiny", 4, "off")).save_pretrained(pretrained)
    trainer = _trainer(synth_small, tmp_path / "run", init=str(pretrained), epochs=1, freeze=False)
    assert all(p.requires_grad for p in trainer.model.parameters())
    before = trainer.model.vit.embeddings.patch_embeddings.projection.weight.detach().clone()
    trainer.run()
    assert not torch.equal(before, trainer.model.vit.embeddings.patch_embeddings.projection.weight)
