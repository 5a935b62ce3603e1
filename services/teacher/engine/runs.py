"""Runs: one VLM sequence each (a request, or one box of a dense request), and how they are batched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from services.teacher.engine.answer import AnswerPlan
from services.teacher.engine.prompts import ParsedAnswer
from services.teacher.engine.visual import SquarePadding, draw_boxes, pad_to_square
from shared.schemas import Box


@dataclass
class Run:
    """One VLM sequence; the answer step fills the answer fields, the capture step `fore` and `back`."""

    request_index: int
    image: Image.Image  # padded to square, boxes drawn
    padding: SquarePadding
    plan: AnswerPlan
    label: str | None
    box: Box | None = None
    generated: list[int] = field(default_factory=list)
    answer: str = ""
    parsed: ParsedAnswer | None = None
    fore_rows: list[int] = field(default_factory=list)  # answer-token indices
    back_rows: list[int] = field(default_factory=list)
    fore_tokens: list[str] = field(default_factory=list)
    back_tokens: list[str] = field(default_factory=list)
    fore: np.ndarray | None = None  # (L, N) attention on image tokens, per captured layer
    back: np.ndarray | None = None


def make_runs(index: int, image: Image.Image, label: str | None, sequences: Sequence[tuple[Box | None, AnswerPlan]],
              fill: Sequence[float]) -> list[Run]:
    """The runs of request `index`; a box is the visual prompt, so each box is drawn alone on its own copy."""
    runs = []
    for box, plan in sequences:
        square, padding = pad_to_square(image if box is None else draw_boxes(image, [box]), fill)
        runs.append(Run(index, square, padding, plan, label if box is None else box.label, box=box))
    return runs


def chunks(runs: Sequence[Run], size: int) -> list[list[Run]]:
    # Similar lengths together: less padding in every batch.
    ordered = sorted(runs, key=lambda r: len(r.plan.prompt_ids))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]
