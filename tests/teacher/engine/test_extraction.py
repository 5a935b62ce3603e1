"""The engine end to end on the offline tiny LLaVA: maps, batching, answers, bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.teacher.engine.extraction import ExtractionSettings, InteractionEngine, InteractionRequest
from services.teacher.engine.prompts import AnswerStatus
from shared.errors import ImageTooLarge, InvalidImage, InvalidRequest
from shared.schemas import Box


def _image(seed: int, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims another size: a bomb without the memory."""
    data = bytearray(_png_bytes(Image.new("RGB", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _mixed_requests() -> list[InteractionRequest]:
    return [
        InteractionRequest(image=_image(0), vocabulary=["circle", "square", "star"], grid=(14, 14)),
        InteractionRequest(image=_image(1, (200, 300)), label="dog", return_layers=True),
        InteractionRequest(image=_png_bytes(_image(2, (256, 256))), prompt="single-word"),
        InteractionRequest(
            image=_image(3, (300, 200)),
            task="detection",
            boxes=[Box(xyxy=(10, 10, 120, 90), label="cat"), Box(xyxy=(150, 60, 290, 190), label="dog")],
            per_instance=True,
            grid=(7, 7),
        ),
    ]


def test_maps_are_distributions_over_the_whole_image(engine: InteractionEngine):
    results = engine.extract_batch(_mixed_requests())
    for result in results:
        assert result.map.dtype == np.float32
        assert (result.map >= 0).all()
        assert result.map.sum() == pytest.approx(1.0, abs=1e-5)
        assert result.model.revision.startswith("sha256:")
        assert result.prompt == {"single-word": "single-word@v2"}.get(result.prompt.split("@")[0],
                                                                      result.prompt.split("@")[0] + "@v1")
    assert results[0].map.shape == (14, 14)
    assert results[1].map.shape == (24, 16)  # native grid of a 2:3 image: 24 rows over 16 columns
    assert results[1].layers.shape == (4, 24, 16)
    assert np.allclose(results[1].layers.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert results[3].map.shape == (7, 7)
    assert len(results[3].instances) == 2
    for inst in results[3].instances:
        assert inst.map.sum() == pytest.approx(1.0, abs=1e-5)


def test_batch_equals_one_at_a_time(tiny_dir):
    batched = InteractionEngine.from_pretrained(str(tiny_dir), max_batch_size=8).extract_batch(_mixed_requests())
    single = InteractionEngine.from_pretrained(str(tiny_dir), max_batch_size=1)
    for request, together in zip(_mixed_requests(), batched, strict=True):
        alone = single.extract(request)
        assert alone.answer == together.answer
        assert alone.foreground_tokens == together.foreground_tokens
        assert alone.background_tokens == together.background_tokens
        np.testing.assert_allclose(alone.map, together.map, atol=1e-5)


def test_vocabulary_choice_and_forced_label(engine: InteractionEngine):
    vocabulary = ["circle", "square", "triangle"]
    chosen = engine.extract(InteractionRequest(image=_image(5), vocabulary=vocabulary))
    assert chosen.answer_status in {AnswerStatus.ok, AnswerStatus.no_background}
    assert "".join(chosen.foreground_tokens).strip() in vocabulary
    assert chosen.answer.startswith("{'foreground': '")
    forced = engine.extract(InteractionRequest(image=_image(5), label="hexagon"))
    assert forced.answer.startswith("{'foreground': 'hexagon', 'background': '")
    assert "".join(forced.foreground_tokens).strip() == "hexagon"
    # punctuation and template words are never selected
    for token in forced.foreground_tokens + forced.background_tokens:
        assert any(c.isalnum() for c in token)
        assert token.strip() not in {"foreground", "background"}


def test_malformed_answer_is_reported_not_raised(tiny_dir):
    class Rambling:
        name = "rambling"

        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def generate(self, plans, batch, images=None):
            return [self.tokenizer("!!! ???", add_special_tokens=False).input_ids for _ in plans]

    engine = InteractionEngine.from_pretrained(str(tiny_dir))
    engine.answerer = Rambling(engine.tokenizer)
    result = engine.extract(InteractionRequest(image=_image(6), prompt="describe"))
    assert result.answer_status is AnswerStatus.malformed
    assert result.degenerate
    assert "no words" in result.answer_message
    assert result.map.sum() == pytest.approx(1.0, abs=1e-5)


def test_degenerate_when_background_dominates(engine: InteractionEngine, monkeypatch):
    # fore == back everywhere -> max(0, fore - back) is zero: flagged, uniform, no division by zero.
    original = engine._compute

    def same_rows(runs):
        original(runs)
        for run in runs:
            run.back = run.fore.copy()

    monkeypatch.setattr(engine, "_compute", same_rows)
    result = engine.extract(InteractionRequest(image=_image(7), label="circle", grid=(4, 4)))
    assert result.degenerate
    np.testing.assert_allclose(result.map, np.full((4, 4), 1 / 16), atol=1e-7)


@pytest.mark.parametrize(
    ("request_kwargs", "error", "match"),
    [
        ({"task": "detection", "boxes": [Box(xyxy=(10, 10, 400, 100), label="cat")]}, InvalidRequest, "outside"),
        ({"task": "detection", "boxes": [Box(xyxy=(-5, 0, 10, 10), label="cat")]}, InvalidRequest, "outside"),
        ({"vocabulary": []}, InvalidRequest, "non-empty"),
        ({}, InvalidRequest, "needs a label"),
        ({"task": "captioning", "label": "cat"}, InvalidRequest, "unknown task"),
        ({"prompt": "nope", "label": "cat"}, InvalidRequest, "unknown prompt"),
        ({"task": "detection"}, InvalidRequest, "at least one box"),
        ({"label": "cat", "boxes": [Box(xyxy=(1, 1, 5, 5), label="cat")]}, InvalidRequest, "only used by"),
        ({"label": "cat", "grid": (0, 14)}, InvalidRequest, "grid"),
        ({"vocabulary": [f"w{i}" for i in range(100_000)]}, InvalidRequest, "limit"),
        ({"image": b"this is not an image", "label": "cat"}, InvalidImage, "not an image"),
        ({"image": b"", "label": "cat"}, InvalidImage, "empty"),
        ({"image": _png_header_claiming(20000, 20000), "label": "cat"}, ImageTooLarge, "400000000 pixels"),
        ({"image": _png_bytes(_image(0))[:200], "label": "cat"}, InvalidImage, "truncated"),
    ],
)
def test_bad_input_is_a_clear_error(engine: InteractionEngine, request_kwargs, error, match):
    kwargs = {"image": _image(0)} | request_kwargs
    with pytest.raises(error, match=match):
        engine.extract(InteractionRequest(**kwargs))


def test_an_image_over_our_own_pixel_limit_names_its_size(tiny_dir):
    engine = InteractionEngine.from_pretrained(str(tiny_dir), max_pixels=1000)
    with pytest.raises(ImageTooLarge, match="64x64"):
        engine.extract(InteractionRequest(image=_png_bytes(_image(0, (64, 64))), label="cat"))


def test_a_prompt_longer_than_the_context_is_refused_at_validation(engine: InteractionEngine):
    words = [f"{'x' * 50}{i}" for i in range(1000)]
    with pytest.raises(InvalidRequest, match="context") as refused:
        engine.validate(InteractionRequest(image=_image(0), vocabulary=words))
    assert refused.value.code == "prompt_too_long"


def test_box_with_nan_is_refused_by_the_schema():
    with pytest.raises(ValueError, match="finite"):
        Box(xyxy=(float("nan"), 0, 10, 10), label="cat")


def test_a_bad_request_in_a_batch_names_its_index(engine: InteractionEngine):
    with pytest.raises(InvalidRequest, match="request 1"):
        engine.extract_batch([InteractionRequest(image=_image(0), label="a"), InteractionRequest(image=_image(0))])


def test_settings_out_of_range_are_refused(tiny_dir):
    with pytest.raises(InvalidRequest, match="layers"):
        InteractionEngine.from_pretrained(str(tiny_dir), settings=ExtractionSettings(layers=(9,)))
