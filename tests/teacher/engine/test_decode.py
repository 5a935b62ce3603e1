"""Capture during decoding (`capture="decode"`) gives the maps of the teacher-forced second pass.

Every prompt, a forced label and a vocabulary choice, padded batches (batch 8 mixes prompt
lengths) and batch 1, per-instance boxes, per-layer maps, MHA and GQA, both row settings:
maps within 1e-5 (float32) and identical answers. And a fully forced answer is never generated.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.teacher.engine.extraction import (
    ExtractionSettings,
    InteractionEngine,
    InteractionRequest,
    InteractionResult,
)
from services.teacher.engine.loading import load_vlm
from shared.errors import InvalidRequest
from shared.schemas import Box


def _png(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _requests() -> list[InteractionRequest]:
    boxes = [Box(xyxy=[1, 2, 30, 40], label="cat"), Box(xyxy=[10, 10, 70, 50], label="dog")]
    return [
        InteractionRequest(image=_png(1), label="circle"),
        InteractionRequest(image=_png(2), vocabulary=["circle", "square", "star"]),
        InteractionRequest(image=_png(3), prompt="single-word"),
        InteractionRequest(image=_png(4), prompt="describe"),
        InteractionRequest(image=_png(5), label="potter wheel", return_layers=True),
        InteractionRequest(image=_png(6), task="detection", boxes=boxes, per_instance=True),
        InteractionRequest(image=_png(7, (50, 90)), vocabulary=["a b c", "dog"], return_layers=True),
    ]


def _max_difference(a: InteractionResult, b: InteractionResult) -> float:
    worst = float(np.abs(a.map - b.map).max())
    if a.layers is not None:
        worst = max(worst, float(np.abs(a.layers - b.layers).max()))
    for x, y in zip(a.instances or [], b.instances or [], strict=True):
        worst = max(worst, float(np.abs(x.map - y.map).max()))
    return worst


@pytest.mark.parametrize("rows", ["word", "predicting"])
@pytest.mark.parametrize("checkpoint", ["tiny_dir", "tiny_gqa_dir"])
def test_decode_capture_equals_the_second_pass(checkpoint: str, rows: str, request: pytest.FixtureRequest) -> None:
    vlm = load_vlm(str(request.getfixturevalue(checkpoint)))
    settings = ExtractionSettings(rows=rows)
    everything = _requests()
    # batch 8: every request padded together; batch 1: a vocabulary choice and a dense request alone
    for batch, requests in ((8, everything), (1, [everything[1], everything[5]])):
        decode = InteractionEngine(vlm, settings, max_batch_size=batch, capture="decode")
        second = InteractionEngine(vlm, settings, max_batch_size=batch, capture="second-pass")
        by_decode, by_second = decode.extract_batch(requests), second.extract_batch(requests)
        for i, (d, s) in enumerate(zip(by_decode, by_second, strict=True)):
            assert d.answer == s.answer, (batch, i)
            assert (d.foreground_tokens, d.background_tokens) == (s.foreground_tokens, s.background_tokens)
            assert d.degenerate == s.degenerate
            assert _max_difference(d, s) < 1e-5, (checkpoint, rows, batch, i)


class NoGeneration:
    """An answerer that fails the test if it is asked for anything."""

    name = "transformers"
    captures_while_decoding = True

    def generate(self, *args, **kwargs):
        raise AssertionError("a fully forced answer was generated")


def test_a_fully_forced_answer_is_one_forward_in_both_modes(tiny_dir) -> None:
    vlm = load_vlm(str(tiny_dir))
    forced = [
        InteractionRequest(image=_png(8), label="circle", background="stripes"),
        InteractionRequest(image=_png(9), label="dog", prompt="single-word"),
        InteractionRequest(image=_png(10), task="detection", background="grass",
                           boxes=[Box(xyxy=[0, 0, 40, 30], label="cat")]),
    ]
    results = {}
    for mode in ("decode", "second-pass"):
        engine = InteractionEngine(vlm, max_batch_size=8, capture=mode, answerer=NoGeneration())
        results[mode] = engine.extract_batch(forced)
    first, dense = results["decode"][0], results["decode"][2]
    assert first.answer == "{'foreground': 'circle', 'background': 'stripes'}"
    assert "".join(first.background_tokens).strip() == "stripes"
    assert results["decode"][1].answer == "dog"
    assert dense.answer.endswith("the background is grass.")
    for d, s in zip(results["decode"], results["second-pass"], strict=True):
        assert d.answer == s.answer and _max_difference(d, s) == 0.0


def test_background_needs_a_template_with_one_and_a_label(engine) -> None:
    with pytest.raises(InvalidRequest, match="no background"):
        engine.extract(InteractionRequest(image=_png(1), label="a", background="b", prompt="describe"))
    with pytest.raises(InvalidRequest, match="needs 'label'"):
        engine.extract(InteractionRequest(image=_png(1), vocabulary=["a", "b"], background="b"))


def test_decode_capture_needs_an_in_process_answerer(tiny_dir) -> None:
    class Remote:
        name = "vllm"

        def generate(self, *args, **kwargs):
            raise AssertionError

    vlm = load_vlm(str(tiny_dir))
    assert InteractionEngine(vlm, answerer=Remote()).capture == "second-pass"
    assert InteractionEngine(vlm).capture == "decode"
    with pytest.raises(InvalidRequest, match="second-pass"):
        InteractionEngine(vlm, answerer=Remote(), capture="decode")
    with pytest.raises(InvalidRequest, match="unknown capture mode"):
        InteractionEngine(vlm, capture="third-pass")
