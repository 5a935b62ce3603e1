"""Matching and the instance alignment: shapes, and a finite loss with empty, degenerate and padded maps."""

from __future__ import annotations

import math

import torch

from services.student.detection.alignment import instance_alignment_loss, match, matcher_for
from services.student.detection.model import CrossAttentionReport, InteractionCollector, build_detector

QUERIES, HEADS, CELLS = 16, 4, 64


def _reports(layers: int = 2, batch: int = 2, seed: int = 0) -> list[CrossAttentionReport]:
    generator = torch.Generator().manual_seed(seed)
    return [CrossAttentionReport(torch.log_softmax(torch.randn(batch, HEADS, QUERIES, CELLS, generator=generator), -1)
                                 .requires_grad_()) for _ in range(layers)]


def _pairs(*pairs: tuple[list[int], list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor(q, dtype=torch.long), torch.tensor(j, dtype=torch.long)) for q, j in pairs]


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n, CELLS), 1 / CELLS)


def test_the_loss_is_the_kl_of_each_matched_query_against_its_own_object() -> None:
    reports = _reports()
    maps = [torch.softmax(torch.randn(2, CELLS), -1), torch.softmax(torch.randn(1, CELLS), -1)]
    valid = [torch.tensor([True, True]), torch.tensor([True])]
    indices = _pairs(([5, 2], [1, 0]), ([7], [0]))  # query 5 <- object 1, query 2 <- object 0, image 1: 7 <- 0
    loss = instance_alignment_loss(reports, indices, maps, valid)
    expected = []
    for report in reports:
        for b, q, j in ((0, 5, 1), (0, 2, 0), (1, 7, 0)):
            student = torch.logsumexp(report.log_probs[b, :, q], 0) - math.log(HEADS)
            target = maps[b][j]
            expected.append((target * (target.log() - student)).sum())
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    loss.backward()
    grad = reports[0].log_probs.grad
    assert grad[0, :, 5].abs().sum() > 0 and grad[0, :, 3].abs().sum() == 0  # only matched queries are pulled
    only_last = instance_alignment_loss(reports, indices, maps, valid, layers=[1])
    assert torch.isfinite(only_last) and not torch.allclose(only_last, loss)


def test_no_objects_no_maps_and_degenerate_maps_give_zero_not_nan() -> None:
    reports = _reports()
    empty = _pairs(([], []), ([], []))
    nothing = [torch.zeros(0, CELLS), torch.zeros(0, CELLS)]
    none_valid = [torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)]
    assert instance_alignment_loss(reports, empty, nothing, none_valid).item() == 0.0
    degenerate = [torch.zeros(1, CELLS), torch.zeros(1, CELLS)]  # the teacher's all-zero map: flagged invalid
    loss = instance_alignment_loss(reports, _pairs(([0], [0]), ([1], [0])), degenerate,
                                   [torch.tensor([False]), torch.tensor([False])])
    assert loss.item() == 0.0
    zero_but_valid = instance_alignment_loss(reports, _pairs(([0], [0]), ([1], [0])), degenerate,
                                             [torch.tensor([True]), torch.tensor([True])])
    assert zero_but_valid.item() == 0.0  # a map with no mass teaches nothing, even if someone called it valid
    assert instance_alignment_loss([], _pairs(([0], [0])), [_uniform(1)], [torch.tensor([True])]).item() == 0.0


def test_padding_cells_never_make_the_loss_infinite() -> None:
    reports = _reports(batch=1)
    scores = torch.randn(1, HEADS, QUERIES, CELLS)
    scores[..., 40:] = float("-inf")  # cells 40.. are padding, as the masked attention gives them
    reports[0] = CrossAttentionReport(torch.log_softmax(scores, -1).requires_grad_())
    target = _uniform(1)  # mass on padding cells too (a cell half over the image, say)
    loss = instance_alignment_loss(reports[:1], _pairs(([3], [0])), [target], [torch.tensor([True])])
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(reports[0].log_probs.grad).all()
    on_padding_only = torch.zeros(1, CELLS)
    on_padding_only[0, 50] = 1.0
    assert instance_alignment_loss(reports[:1], _pairs(([3], [0])), [on_padding_only],
                                   [torch.tensor([True])]).item() == 0.0


def test_the_matcher_pairs_every_object_with_one_query() -> None:
    model = build_detector("cdetr-tiny", 4, "full")
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.3, 0.1, 0.1]])
    labels = [{"class_labels": torch.tensor([1, 3]), "boxes": boxes},
              {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    collector = InteractionCollector()
    out = model(pixel_values=torch.randn(2, 3, 64, 64), pixel_mask=torch.ones(2, 64, 64, dtype=torch.long),
                interactions=collector)
    indices = match(matcher_for(model.config), out.logits, out.pred_boxes, labels)
    assert [len(q) for q, _ in indices] == [2, 0]
    assert sorted(indices[0][1].tolist()) == [0, 1] and len(set(indices[0][0].tolist())) == 2
    maps = [torch.softmax(torch.randn(2, CELLS), -1), torch.zeros(0, CELLS)]
    valid = [torch.tensor([True, True]), torch.zeros(0, dtype=torch.bool)]
    loss = instance_alignment_loss(collector.layers, indices, maps, valid)
    assert loss.ndim == 0 and loss > 0
    assert match(matcher_for(model.config), out.logits, out.pred_boxes, [labels[1], labels[1]])[0][0].numel() == 0
