"""I-DETR on transformers' DETR classes: built from config, weights untouched, the interaction path, sizes."""

from __future__ import annotations

import pytest
import torch

from services.student.detection.model import (
    DETECTOR_SIZES,
    InteractionCollector,
    build_detector,
    cross_attentions,
    interaction_parameters,
)
from shared.job_spec import JobSpec
from shared.student_names import DETECTOR_NAMES

LABELS = [{"class_labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])},
          {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.4, 0.2, 0.3]])}]


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 64, 64, generator=generator), torch.ones(2, 64, 64, dtype=torch.long)


@pytest.mark.parametrize("name", ["cdetr-tiny", "detr-tiny"])
def test_at_initialisation_i_detr_computes_exactly_what_its_detr_computes(name: str) -> None:
    """W'_q starts as the identity and the gate at 0.5/0.5: C_AGT = C_VFM, so the output is the plain model's."""
    torch.manual_seed(0)
    plain = build_detector(name, 4, "off").eval()
    interacting = build_detector(name, 4, "full").eval()
    missing, unexpected = interacting.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".interaction." in key for key in missing)
    pixels, mask = _inputs()
    collector = InteractionCollector()
    with torch.no_grad():
        expected = plain(pixel_values=pixels, pixel_mask=mask)
        got = interacting(pixel_values=pixels, pixel_mask=mask, interactions=collector)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pred_boxes, expected.pred_boxes, atol=1e-5, rtol=1e-5)
    layers = plain.config.decoder_layers
    queries = DETECTOR_SIZES[name].queries
    assert [r.log_probs.shape for r in collector.layers] == [(2, 4, queries, 64)] * layers
    for report in collector.layers:
        assert torch.allclose(report.log_probs.exp().sum(-1), torch.ones(2, 4, queries))
        assert torch.allclose(report.gates, torch.tensor([0.5, 0.5]))


def test_modes_build_their_parts_and_report_what_they_constrain() -> None:
    pixels, mask = _inputs()
    counts = {}
    for mode in ("off", "full", "no-constraint", "no-gate", "constraint-on-original"):
        model = build_detector("cdetr-tiny", 4, mode)
        collector = InteractionCollector()
        model(pixel_values=pixels, pixel_mask=mask, labels=LABELS, interactions=collector).loss.backward()
        counts[mode] = sum(p.numel() for p in interaction_parameters(model))
        reports = len(collector.layers)
        assert reports == (0 if mode == "off" else model.config.decoder_layers)
        if mode in ("full", "no-constraint"):
            gate = cross_attentions(model)[0].interaction.gate
            assert gate[-1].weight.grad is not None and gate[-1].weight.grad.abs().sum() > 0
    assert counts["off"] == counts["constraint-on-original"] == 0
    assert counts["full"] == counts["no-constraint"] > counts["no-gate"] > 0


def test_a_padded_batch_stays_finite() -> None:
    model = build_detector("cdetr-tiny", 4, "full")
    pixels, mask = _inputs()
    mask[1, :, 40:] = 0  # the second image is narrower: its right side is padding
    collector = InteractionCollector()
    out = model(pixel_values=pixels, pixel_mask=mask, labels=LABELS, interactions=collector)
    assert torch.isfinite(out.loss)
    padded = collector.layers[0].log_probs[1, 0, 0].view(8, 8)
    assert torch.isinf(padded[:, 6:]).all() and torch.isfinite(padded[:, :5]).all()


def test_pretrained_weights_load_unchanged_with_a_new_class_head(tmp_path) -> None:
    torch.manual_seed(1)
    source = build_detector("cdetr-tiny", 7, "off")
    source.save_pretrained(tmp_path / "saved")
    loaded = build_detector("cdetr-tiny", 4, "full", init=str(tmp_path / "saved"))
    theirs = source.state_dict()
    for key, value in loaded.state_dict().items():
        if ".interaction." in key or key.startswith("class_labels_classifier"):
            continue
        torch.testing.assert_close(value, theirs[key], msg=key)
    assert loaded.class_labels_classifier.out_features == 4


def test_every_detector_name_of_the_job_spec_has_a_geometry() -> None:
    assert set(DETECTOR_SIZES) == set(DETECTOR_NAMES)
    assert JobSpec(dataset="x", task="detection", model="detr-r50", student="detr").model == "detr-r50"


@pytest.mark.slow
def test_detr_r50_grows_as_the_paper_says() -> None:
    """Paper (Table 6): DETR 41.5M -> I-DETR 41.9M. Same geometry here (ResNet-50, 6+6 layers, d 256)."""
    plain = sum(p.numel() for p in build_detector("detr-r50", 91, "off").parameters())
    interacting = build_detector("detr-r50", 91, "full")
    added = sum(p.numel() for p in interaction_parameters(interacting))
    assert 41.0e6 < plain < 42.0e6
    assert 0.35e6 < added < 0.45e6
