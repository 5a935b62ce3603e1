"""The alignment loss: finite with exact zeros in C_VLM, zero when the student matches."""

from __future__ import annotations

import pytest
import torch

from services.student.alignment import alignment_loss


def _target_with_zeros(batch=3, patches=16):
    target = torch.zeros(batch, patches)
    target[:, :4] = 0.25  # max(0, fore - back) leaves most patches at exactly zero
    return target


def test_finite_with_zeros_in_the_target_and_gradients_finite():
    logits = torch.randn(3, 2, 16, requires_grad=True)
    loss = alignment_loss([logits.log_softmax(-1)], _target_with_zeros(), torch.ones(3, dtype=torch.bool))
    loss.backward()
    assert loss.isfinite() and loss > 0
    assert logits.grad.isfinite().all()


@pytest.mark.parametrize("heads", ["mean", "each"])
def test_zero_when_the_student_already_matches(heads):
    target = torch.softmax(torch.randn(2, 9), -1)
    log_q = target.log().unsqueeze(1).expand(2, 3, 9)
    loss = alignment_loss([log_q, log_q], target, torch.ones(2, dtype=torch.bool), heads=heads)
    assert abs(loss.item()) < 1e-6


def test_model_first_needs_smoothing_and_is_then_finite():
    log_q = torch.randn(3, 2, 16).log_softmax(-1)
    valid = torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="smoothing"):
        alignment_loss([log_q], _target_with_zeros(), valid, direction="model-first")
    loss = alignment_loss([log_q], _target_with_zeros(), valid, direction="model-first", smoothing=0.01)
    assert loss.isfinite() and loss > 0


def test_invalid_maps_are_skipped():
    log_q = torch.randn(2, 2, 16).log_softmax(-1)
    target = _target_with_zeros(2)
    target[1] = 0  # degenerate: no alignment term
    only_first = alignment_loss([log_q[:1]], target[:1], torch.tensor([True]))
    both = alignment_loss([log_q], target, torch.tensor([True, False]))
    assert torch.allclose(only_first, both)
    assert alignment_loss([log_q], target, torch.tensor([False, False])) == 0
