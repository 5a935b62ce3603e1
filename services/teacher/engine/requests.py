"""Requests: what a caller asks for (`InteractionRequest`) and what the engine computes on (`ValidRequest`).

`validate_request` is the one gate between them. The HTTP edge's pydantic schema checks the same
limits, but the engine is also a Python library whose callers hand it plain dataclasses, so the
checks a map depends on live here, once; nothing after this gate checks a request again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from services.teacher.engine.prompts import DEFAULT_TEMPLATE, SYSTEM_PROMPTS, TEMPLATES, PromptTemplate
from shared.errors import InvalidRequest
from shared.images import check_image_size, decode_image
from shared.schemas import MAX_VOCABULARY, Box, Task

MAX_WORD_CHARS = 64
MAX_BOXES = 64
MAX_GRID = 256


@dataclass
class InteractionRequest:
    image: Image.Image | bytes
    task: Task | str = Task.classification
    label: str | None = None
    vocabulary: list[str] | None = None
    boxes: list[Box] = field(default_factory=list)
    background: str | None = None  # with the label (or box labels): the whole answer is forced
    prompt: str | None = None  # template id; default per task
    grid: tuple[int, int] | None = None
    per_instance: bool = False
    return_layers: bool = False
    system_prompt: str | None = None  # "llava" | "none"; None: the engine's (ExtractionSettings.system_prompt)


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed `validate_request`: image decoded, template resolved, words and boxes normalised."""

    image: Image.Image  # RGB
    task: Task
    template: PromptTemplate
    label: str | None
    vocabulary: tuple[str, ...] | None  # stripped, duplicates dropped, order kept
    background: str | None
    boxes: tuple[Box, ...]
    grid: tuple[int, int] | None
    per_instance: bool
    return_layers: bool
    system_prompt: str | None = None  # None: the engine's

    @property
    def prompt(self) -> str:
        """The template id, under the name `InteractionRequest` gives it."""
        return self.template.id


def validate_request(request: InteractionRequest, *, max_pixels: int) -> ValidRequest:
    """Check and normalise one request, or raise InvalidRequest / InvalidImage / ImageTooLarge."""
    task = _task(request.task)
    template = _template(request.prompt, task)
    image = _image(request.image, max_pixels)
    label = _label(request.label)
    vocabulary = _vocabulary(request.vocabulary)
    if template.uses_vocabulary and label is None and not vocabulary:
        raise InvalidRequest(
            f"prompt {template.id!r} needs a label (forced foreground) or a vocabulary to choose from",
            code="empty_vocabulary",
        )
    return ValidRequest(
        image=image, task=task, template=template, label=label, vocabulary=vocabulary,
        background=_background(request.background, template, task, label),
        boxes=_boxes(request.boxes, task, image), grid=_grid(request.grid),
        per_instance=bool(request.per_instance), return_layers=bool(request.return_layers),
        system_prompt=_system_prompt(request.system_prompt),
    )


def _system_prompt(name: str | None) -> str | None:
    if name is not None and name not in SYSTEM_PROMPTS:
        raise InvalidRequest(f"unknown system_prompt {name!r}; use one of {sorted(SYSTEM_PROMPTS)}",
                             code="unknown_system_prompt")
    return name


def _task(value: Task | str) -> Task:
    try:
        return Task(value)
    except ValueError:
        raise InvalidRequest(
            f"unknown task {value!r}; use one of {[t.value for t in Task]}", code="unknown_task"
        ) from None


def _template(prompt_id: str | None, task: Task) -> PromptTemplate:
    prompt_id = prompt_id or DEFAULT_TEMPLATE[task]
    template = TEMPLATES.get(prompt_id)
    if template is None:
        raise InvalidRequest(f"unknown prompt {prompt_id!r}; use one of {sorted(TEMPLATES)}", code="unknown_prompt")
    if task not in template.tasks:
        raise InvalidRequest(f"prompt {prompt_id!r} is for {[t.value for t in template.tasks]}, not {task.value}")
    return template


def _image(image: Image.Image | bytes, max_pixels: int) -> Image.Image:
    if isinstance(image, Image.Image):
        check_image_size(*image.size, max_pixels=max_pixels)
        return image.convert("RGB")
    return decode_image(image, max_pixels=max_pixels)


def _is_word(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_WORD_CHARS


def _label(label: str | None) -> str | None:
    label = label.strip() if isinstance(label, str) else label
    if label is not None and not _is_word(label):
        raise InvalidRequest(f"label must be a non-empty string of at most {MAX_WORD_CHARS} characters")
    return label


def _background(background: str | None, template: PromptTemplate, task: Task, label: str | None) -> str | None:
    """The forced background word: only where the template's answer has one, and with the foreground known."""
    background = background.strip() if isinstance(background, str) else background
    if background is None:
        return None
    if not _is_word(background):
        raise InvalidRequest(f"background must be a non-empty string of at most {MAX_WORD_CHARS} characters")
    if not template.has_background:
        raise InvalidRequest(f"prompt {template.id!r} has no background in its answer; drop 'background'")
    if not task.is_dense and label is None:
        raise InvalidRequest("'background' forces the whole answer, so it needs 'label' (the foreground) too")
    return background


def _vocabulary(vocabulary: Sequence[str] | None) -> tuple[str, ...] | None:
    if vocabulary is None:
        return None
    if not isinstance(vocabulary, list) or not vocabulary:
        raise InvalidRequest("vocabulary must be a non-empty list of words", code="empty_vocabulary")
    if len(vocabulary) > MAX_VOCABULARY:
        raise InvalidRequest(f"vocabulary has {len(vocabulary)} words; the limit is {MAX_VOCABULARY}")
    cleaned = [w.strip() if isinstance(w, str) else w for w in vocabulary]
    # Quotes are fine ("potter's wheel"): the parser takes a listed word whole (prompts.parse_answer).
    if any(not _is_word(w) for w in cleaned):
        raise InvalidRequest(f"vocabulary words must be non-empty strings of at most {MAX_WORD_CHARS} characters")
    return tuple(dict.fromkeys(cleaned))


def _boxes(boxes: Sequence[Box | dict] | None, task: Task, image: Image.Image) -> tuple[Box, ...]:
    parsed = tuple(b if isinstance(b, Box) else Box.model_validate(b) for b in boxes or [])
    if task.is_dense:
        if not parsed:
            raise InvalidRequest(f"task {task.value!r} needs at least one box with a label")
        if len(parsed) > MAX_BOXES:
            raise InvalidRequest(f"{len(parsed)} boxes; the limit is {MAX_BOXES}")
    elif parsed:
        raise InvalidRequest("boxes are only used by detection and segmentation; drop them or change the task")
    for box in parsed:
        x0, y0, x1, y1 = box.xyxy
        if x0 < 0 or y0 < 0 or x1 > image.width or y1 > image.height:
            raise InvalidRequest(
                f"box {list(box.xyxy)} lies outside the {image.width}x{image.height} image", code="box_outside_image"
            )
    return parsed


def _grid(grid: Sequence[int] | None) -> tuple[int, int] | None:
    if grid is None:
        return None
    if len(grid) != 2 or not all(isinstance(v, int) and 1 <= v <= MAX_GRID for v in grid):
        raise InvalidRequest(f"grid must be [h, w] with integers in 1..{MAX_GRID}")
    return int(grid[0]), int(grid[1])
