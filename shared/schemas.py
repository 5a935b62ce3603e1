"""Request vocabulary shared by the teacher, its clients and the student."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Task(StrEnum):
    classification = "classification"
    detection = "detection"
    segmentation = "segmentation"

    @property
    def is_dense(self) -> bool:
        return self is not Task.classification


class Box(BaseModel):
    """An instance box in pixels of the original image, top-left origin."""

    model_config = ConfigDict(extra="forbid")

    xyxy: tuple[float, float, float, float]
    label: str = Field(min_length=1, max_length=100)

    @field_validator("xyxy")
    @classmethod
    def _finite_and_ordered(cls, xyxy: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if not all(math.isfinite(v) for v in xyxy):
            raise ValueError("box coordinates must be finite numbers")
        x0, y0, x1, y1 = xyxy
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {list(xyxy)} is empty: need x0 < x1 and y0 < y1")
        return xyxy


# ---- Teacher REST contract ------------------------------------------------------------------------

GridSide = Annotated[int, Field(ge=1, le=256)]
Word = Annotated[str, Field(min_length=1, max_length=64)]
MAX_VOCABULARY = 1000
MAX_BATCH_ITEMS = 256


class Priority(StrEnum):
    interactive = "interactive"
    bulk = "bulk"


class InteractionRequestBody(BaseModel):
    """One request. `image` is base64 (JSON) or a multipart file; a batch item may carry only `key`."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="Base64-encoded image bytes (PNG, JPEG, WebP, ...).")
    key: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="Cache-only look-up by key.")
    task: Task = Task.classification
    label: Word | None = None
    vocabulary: list[Word] | None = Field(None, max_length=MAX_VOCABULARY)
    boxes: list[Box] = Field(default_factory=list, max_length=64)
    background: Word | None = Field(None, description="With `label` (or box labels): the whole answer is "
                                    "forced, nothing is generated, and the map costs one forward.")
    prompt: str | None = Field(None, max_length=64)
    grid: tuple[GridSide, GridSide] | None = None
    per_instance: bool = False
    return_layers: bool = False
    system_prompt: Literal["llava", "none"] | None = Field(
        None, description="The system prompt the question is asked under: `llava` (LLaVA-1.5's own) or `none`; "
        "default: the teacher's setting (GET /info, `extraction.system_prompt`).")
    priority: Priority = Priority.interactive


class BatchRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[InteractionRequestBody] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class MapPayload(BaseModel):
    shape: list[int]
    dtype: Literal["float16"] = "float16"
    data: str = Field(description="Little-endian float16 values, row-major, base64.")


class ModelInfo(BaseModel):
    id: str
    revision: str


class InstancePayload(BaseModel):
    box: Box
    map: MapPayload
    answer: str
    answer_status: str
    foreground_tokens: list[str]
    background_tokens: list[str]
    degenerate: bool
    question: str = ""


class InteractionResponse(BaseModel):
    key: str
    map: MapPayload
    question: str = Field("", description="The exact prompt text the model was asked, up to its answer.")
    answer: str
    answer_status: str
    answer_message: str = ""
    foreground_tokens: list[str]
    background_tokens: list[str]
    instances: list[InstancePayload] | None = None
    layers: MapPayload | None = None
    model: ModelInfo
    prompt: str
    cached: bool
    compute_ms: float
    degenerate: bool


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class BatchResponseBody(BaseModel):
    items: list[InteractionResponse | ErrorBody]
