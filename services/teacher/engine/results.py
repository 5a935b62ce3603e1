"""Results: what a request gets back, and how its runs' answers and attention become one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.teacher.engine.loading import ModelIdentity
from services.teacher.engine.maps import contrast, image_map
from services.teacher.engine.prompts import AnswerStatus
from services.teacher.engine.requests import ValidRequest
from services.teacher.engine.runs import Run
from shared.schemas import Box

# The status a request reports is the worst of its runs', in this order.
STATUS_SEVERITY = (AnswerStatus.malformed, AnswerStatus.off_vocabulary, AnswerStatus.no_background)


@dataclass
class InstanceMap:
    box: Box
    map: np.ndarray
    answer: str
    answer_status: AnswerStatus
    foreground_tokens: list[str]
    background_tokens: list[str]
    degenerate: bool
    question: str = ""  # the prompt text this box's sequence asked


@dataclass
class InteractionResult:
    map: np.ndarray  # (h, w) float32 over the whole original image, sums to 1
    answer: str
    answer_status: AnswerStatus
    answer_message: str
    foreground_tokens: list[str]
    background_tokens: list[str]
    degenerate: bool
    model: ModelIdentity
    prompt: str  # "<template id>@v<version>"
    compute_ms: float
    instances: list[InstanceMap] | None = None
    layers: np.ndarray | None = None  # (L, h, w): C_VLM of each captured layer
    # The exact prompt text the model was asked (system prompt, chat template, question), up to
    # where its answer begins; a dense request's sequences joined with " | ", like `answer`.
    question: str = ""


def run_contrast(runs: Sequence[Run], layer: int | None = None) -> np.ndarray | None:
    """The contrast of a request's runs over the square's tokens: layers averaged, or one captured layer."""
    def pick(rows: np.ndarray) -> np.ndarray:
        return rows.mean(axis=0) if layer is None else rows[layer]

    return contrast([pick(r.fore) for r in runs if r.fore is not None],
                    [pick(r.back) for r in runs if r.back is not None])


def assemble(request: ValidRequest, runs: Sequence[Run], *, side: int, n_layers: int, model: ModelIdentity,
             compute_ms: float) -> InteractionResult:
    """One request's result from its runs (one for classification, one per box for dense tasks)."""
    interaction_map, degenerate = image_map(run_contrast(runs), runs[0].padding, side, request.grid)
    statuses = [run.parsed.status for run in runs]
    template = request.template
    return InteractionResult(
        map=interaction_map,
        answer=" | ".join(run.answer for run in runs) if len(runs) > 1 else runs[0].answer,
        answer_status=next((s for s in STATUS_SEVERITY if s in statuses), AnswerStatus.ok),
        answer_message="; ".join(run.parsed.message for run in runs if run.parsed.message),
        foreground_tokens=[t for run in runs for t in run.fore_tokens],
        background_tokens=[t for run in runs for t in run.back_tokens],
        degenerate=degenerate,
        model=model,
        prompt=f"{template.id}@v{template.version}",
        compute_ms=compute_ms,
        instances=_instances(runs, side, request.grid) if request.per_instance and request.task.is_dense else None,
        layers=_layer_maps(runs, side, request.grid, n_layers) if request.return_layers else None,
        question=" | ".join(run.plan.question for run in runs),
    )


def _instances(runs: Sequence[Run], side: int, grid: tuple[int, int] | None) -> list[InstanceMap]:
    instances = []
    for run in runs:
        instance_map, degenerate = image_map(run_contrast([run]), run.padding, side, grid)
        instances.append(InstanceMap(run.box, instance_map, run.answer, run.parsed.status, run.fore_tokens,
                                     run.back_tokens, degenerate, run.plan.question))
    return instances


def _layer_maps(runs: Sequence[Run], side: int, grid: tuple[int, int] | None, n_layers: int) -> np.ndarray:
    padding = runs[0].padding
    return np.stack([image_map(run_contrast(runs, layer), padding, side, grid)[0] for layer in range(n_layers)])
