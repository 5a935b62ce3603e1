"""The one validation gate: what a ValidRequest holds, and that the engine never checks it again."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image

from services.teacher.engine.extraction import InteractionEngine
from services.teacher.engine.prompts import TEMPLATES
from services.teacher.engine.requests import InteractionRequest, ValidRequest, validate_request
from shared.errors import InvalidRequest
from shared.schemas import Box, Task


def test_a_valid_request_is_decoded_resolved_and_normalised():
    valid = validate_request(
        InteractionRequest(image=Image.new("L", (40, 30)), label=" cat ", vocabulary=[" dog", "cat", "dog"],
                           grid=[7, 7]),
        max_pixels=10_000,
    )
    assert valid.image.mode == "RGB" and valid.image.size == (40, 30)
    assert valid.task is Task.classification
    assert valid.template is TEMPLATES["fg-bg-vocab"] and valid.prompt == "fg-bg-vocab"
    assert valid.label == "cat"
    assert valid.vocabulary == ("dog", "cat")
    assert valid.grid == (7, 7)
    assert valid.boxes == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        valid.label = "dog"


def test_boxes_may_be_plain_dicts():
    valid = validate_request(
        InteractionRequest(image=Image.new("RGB", (40, 30)), task="detection",
                           boxes=[{"xyxy": (1, 1, 10, 10), "label": "cat"}]),
        max_pixels=10_000,
    )
    assert valid.boxes == (Box(xyxy=(1, 1, 10, 10), label="cat"),)


@pytest.mark.parametrize("words", [[""], ["x" * 65], "cat"])
def test_bad_vocabulary_words_are_refused(words):
    with pytest.raises(InvalidRequest, match="vocabulary"):
        validate_request(InteractionRequest(image=Image.new("RGB", (8, 8)), vocabulary=words), max_pixels=100)


def test_the_engine_takes_a_valid_request_as_it_is(engine: InteractionEngine, monkeypatch):
    valid, image, template = engine.validate(InteractionRequest(image=Image.new("RGB", (32, 32)), label="cat"))
    assert isinstance(valid, ValidRequest) and image is valid.image and template is valid.template

    def refuse(*args, **kwargs):
        raise AssertionError("validated twice")

    monkeypatch.setattr("services.teacher.engine.extraction.validate_request", refuse)
    result = engine.extract(valid)
    assert result.map.shape == (24, 24)
