"""I-ViT on transformers' ViT: weights load unchanged, modes, freezing, sizes."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTForImageClassification

from services.student.model import (
    IViTForImageClassification,
    build_student,
    count_flops,
    count_parameters,
    freeze_original,
)
from services.student.model_config import ABLATION_MODES, MODEL_SIZES, MODES, student_config
from shared.job_spec import JobSpec
from shared.student_names import ABLATION_NAMES, DETECTOR_NAMES, MODEL_NAMES


@pytest.fixture(scope="module")
def pretrained_vit(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(student_config("vit-tiny", 7, "off")).save_pretrained(folder)
    return folder


def test_pretrained_vit_loads_and_matches_the_baseline_with_the_interaction_path_off(pretrained_vit):
    baseline = ViTForImageClassification.from_pretrained(pretrained_vit).eval()
    ivit = build_student("vit-tiny", 7, "full", init=str(pretrained_vit)).eval()
    pixels = torch.randn(3, 3, 64, 64)
    ivit.set_interaction(False)
    with torch.no_grad():
        expected = baseline(pixel_values=pixels).logits
        assert torch.equal(ivit(pixel_values=pixels).logits, expected)
    # every original weight arrived unchanged; only the interaction parts are new
    original = baseline.state_dict()
    for name, tensor in ivit.state_dict().items():
        if name in original:
            assert torch.equal(tensor, original[name]), name
        else:
            assert "interaction_q_proj" in name or ".gate." in name, name
    ivit.set_interaction(True)
    with torch.no_grad():
        assert not torch.allclose(ivit(pixel_values=pixels).logits, expected)


def test_an_ivit_checkpoint_round_trips_through_save_and_from_pretrained(tmp_path):
    model = build_student("vit-tiny", 4, "no-gate").eval()
    model.save_pretrained(tmp_path)
    again = IViTForImageClassification.from_pretrained(tmp_path).eval()
    assert again.config.interaction["mode"] == "no-gate"
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, again(pixel_values=pixels).logits)


@pytest.mark.parametrize(("mode", "queries", "gate", "aligned_layers"), [
    ("off", False, False, 0),
    ("full", True, True, 4),
    ("no-constraint", True, True, 0),
    ("constraint-on-original", False, False, 4),
    ("no-gate", True, False, 4),
])
def test_each_mode_has_the_parts_the_paper_ablates(mode, queries, gate, aligned_layers):
    model = build_student("vit-tiny", 4, mode)
    attention = model.interaction_layers[0]
    assert (attention.interaction_q_proj is not None) == queries
    assert (attention.gate is not None) == gate
    out = model.forward_interactions(torch.randn(2, 3, 64, 64))
    assert len(out.alignment) == aligned_layers
    for log_probs in out.alignment:
        assert log_probs.shape == (2, 3, 64)  # batch, heads, 8x8 patches
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 3), atol=1e-5)
    assert all((g is not None) == gate for g in out.gates)
    assert (MODES[mode].has_queries, MODES[mode].has_gate, MODES[mode].aligned) == (queries, gate, aligned_layers > 0)


def test_interaction_queries_start_as_the_layers_own_queries():
    model = build_student("vit-tiny", 4, "no-constraint")
    out = model.forward_interactions(torch.randn(1, 3, 64, 64))
    assert out.logits.isfinite().all()
    for attention in model.interaction_layers:
        assert torch.equal(attention.interaction_q_proj.weight, attention.q_proj.weight)


def test_freezing_leaves_only_interaction_parts_and_head_trainable(pretrained_vit):
    model = build_student("vit-tiny", 7, "full", init=str(pretrained_vit))
    names = freeze_original(model)
    assert names and all("interaction_q_proj" in n or ".gate." in n or n.startswith("classifier.") for n in names)
    counts = count_parameters(model)
    assert counts["trainable"] == counts["interaction"] + sum(p.numel() for p in model.classifier.parameters())


def test_s16_overhead_is_in_the_papers_range():
    vit, ivit = build_student("vit-s16", 200, "off"), build_student("vit-s16", 200, "full")
    params = count_parameters(vit)["total"], count_parameters(ivit)["total"]
    assert 21e6 < params[0] < 23e6 and 23e6 < params[1] < 25e6  # paper: 22M -> 24M
    ratio = count_flops(ivit) / count_flops(vit)
    assert 1.1 < ratio < 1.3  # paper: 15.5 -> 18.1 GFLOPs, x1.17


def test_a_wrong_image_size_is_a_clear_error():
    model = build_student("vit-tiny", 4, "full")
    with pytest.raises(ValueError, match="image_size"):
        model.interaction_layers[0](torch.randn(1, 10, 96))  # 10 tokens, built for 8x8 patches + CLS


def test_unknown_model_size_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        student_config("vit-h14", 4, "full")


@pytest.mark.parametrize("mode", ["full", "no-gate", "constraint-on-original", "no-constraint"])
def test_the_fused_attention_equals_the_papers_equations(mode):
    torch.manual_seed(0)
    model = build_student("vit-tiny", 4, mode).double().eval()
    with torch.no_grad():  # a gate away from its 0.5 start, so both gates matter
        for attention in model.interaction_layers:
            if attention.gate is not None:
                attention.gate.out.bias.copy_(torch.tensor([1.5, -0.7], dtype=torch.float64))
    pixels = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    fused = model.forward_interactions(pixels)
    literal = model.forward_interactions(pixels, explicit=True)
    assert torch.allclose(fused.logits, literal.logits, atol=1e-10)
    for a, b in zip(fused.alignment, literal.alignment, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    for a, b in zip(fused.gates, literal.gates, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-10)


def test_mean_rows_alignment_is_a_distribution_over_patches():
    model = build_student("vit-tiny", 4, "full", align_rows="mean")
    out = model.forward_interactions(torch.randn(2, 3, 64, 64))
    assert all(torch.allclose(a.exp().sum(-1), torch.ones(2, 3), atol=1e-5) for a in out.alignment)


def test_each_row_alignment_is_one_distribution_per_patch_row_and_its_mean_is_the_mean_rows():
    torch.manual_seed(0)
    each = build_student("vit-tiny", 4, "full", align_rows="each")
    mean = build_student("vit-tiny", 4, "full", align_rows="mean")
    mean.load_state_dict(each.state_dict())
    pixels = torch.randn(2, 3, 64, 64)
    rows, averaged = each.forward_interactions(pixels).alignment, mean.forward_interactions(pixels).alignment
    assert all(a.shape == (2, 64, 64) and torch.allclose(a.exp().sum(-1), torch.ones(2, 64), atol=1e-5)
               for a in rows)
    # the rows' distributions averaged over rows equal the mean-rows target averaged over heads
    for a, b in zip(rows, averaged, strict=True):
        assert torch.allclose(a.exp().mean(dim=1), b.exp().mean(dim=1), atol=1e-6)


def test_the_hf_forward_and_forward_interactions_give_the_same_logits():
    model = build_student("vit-tiny", 4, "full").eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=pixels).logits, model.forward_interactions(pixels).logits)


def test_forwards_do_not_share_results_through_the_modules():
    """Each call gets its own reports: two forwards in a row (or at once) never see each other's."""
    model = build_student("vit-tiny", 4, "full").eval()
    small, large = torch.randn(1, 3, 64, 64), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        first = model.forward_interactions(small)
        model(pixel_values=large)  # a plain forward in between leaves nothing behind for anyone to read
        again = model.forward_interactions(small)
    assert [a.shape[0] for a in first.alignment] == [1] * 4
    assert all(torch.equal(a, b) for a, b in zip(first.alignment, again.alignment, strict=True))
    assert not any(isinstance(v, torch.Tensor) for layer in model.interaction_layers for v in vars(layer).values())


def test_cls_rows_are_distributions_per_layer_for_the_pictures():
    model = build_student("vit-tiny", 4, "full").eval()
    with torch.no_grad():
        out = model.forward_interactions(torch.randn(2, 3, 64, 64), cls_rows=True)
    assert len(out.cls_rows) == 4 and all(set(rows) == {"vfm", "agt"} for rows in out.cls_rows)
    assert all(torch.allclose(r.sum(-1), torch.ones(2), atol=1e-5) for rows in out.cls_rows for r in rows.values())


def test_the_job_spec_and_the_student_know_the_same_names():
    assert set(MODEL_SIZES) == set(MODEL_NAMES)
    assert set(MODEL_NAMES) | set(DETECTOR_NAMES) == set(JobSpec.model_fields["model"].annotation.__args__)
    assert set(ABLATION_MODES) == set(ABLATION_NAMES) == set(JobSpec.model_fields["ablation"].annotation.__args__)
