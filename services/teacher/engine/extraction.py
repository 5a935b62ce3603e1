"""The teacher engine: requests in, interaction maps C_VLM out. No HTTP here.

One request becomes one VLM sequence (classification) or one per box (dense
tasks, each box drawn alone as the visual prompt). Sequences run in padded
batches through two steps: the answer step (what the VLM says) and one forward
pass over prompt + answer with attention capture (where its answer words look).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.teacher.engine.answer import AnswerPlan, TransformersAnswerer, plan_answer, token_offsets
from services.teacher.engine.capture import capturing
from services.teacher.engine.loading import LoadedVLM, ModelIdentity, load_vlm
from services.teacher.engine.prompts import (
    DEFAULT_TEMPLATE,
    TEMPLATES,
    AnswerStatus,
    ParsedAnswer,
    PromptTemplate,
    parse_answer,
)
from services.teacher.engine.visual import (
    SquarePadding,
    crop_and_resample,
    draw_boxes,
    native_grid,
    normalise,
    pad_to_square,
)
from shared.errors import InvalidRequest
from shared.images import DEFAULT_MAX_PIXELS, check_image_size, decode_image
from shared.schemas import Box, Task

log = logging.getLogger("lfi.teacher.engine")

MAX_VOCABULARY = 1000
MAX_WORD_CHARS = 64
MAX_BOXES = 64
MAX_GRID = 256


ROW_CHOICES = ("word", "predicting")


@dataclass(frozen=True)
class ExtractionSettings:
    """How attention becomes a map; every field is part of the cache key."""

    layers: tuple[int, ...] | None = None  # text layers averaged (None: all)
    heads: tuple[int, ...] | None = None  # heads per layer (None: all)
    head_reduce: str = "mean"  # "mean" | "max"
    # Whose attention row stands for an answer word: "word", the word token's own query, or
    # "predicting", the query one position earlier, whose output predicts the word (what
    # `generate(output_attentions=True)` reports for the step that wrote it).
    rows: str = "word"

    def __post_init__(self) -> None:
        if self.head_reduce not in {"mean", "max"}:
            raise InvalidRequest(f"head_reduce must be 'mean' or 'max', got {self.head_reduce!r}")
        if self.rows not in ROW_CHOICES:
            raise InvalidRequest(f"rows must be one of {', '.join(ROW_CHOICES)}, got {self.rows!r}")

    def as_dict(self) -> dict:
        return {"layers": self.layers, "heads": self.heads, "head_reduce": self.head_reduce, "rows": self.rows,
                "version": 2}


EXTRACTION_FILE = "lfi_extraction.json"


def recommended_settings(model_dir: str | Path) -> ExtractionSettings:
    """The settings a checkpoint folder recommends (its `lfi_extraction.json`), else the defaults.

    Which layers' attention points at the object is a property of the weights, so the project's
    trained checkpoints carry the choice their measurement made (docs/method.md).
    """
    path = Path(model_dir) / EXTRACTION_FILE
    if not path.is_file():
        return ExtractionSettings()
    try:
        data = json.loads(path.read_text())
        layers = data.get("layers")
        return ExtractionSettings(layers=tuple(int(v) for v in layers) if layers is not None else None,
                                  rows=data.get("rows", "word"), head_reduce=data.get("head_reduce", "mean"))
    except (ValueError, TypeError, AttributeError, InvalidRequest) as exc:
        raise InvalidRequest(f"{path} is not a valid extraction file ({exc}); delete it or fix it") from None


@dataclass
class InteractionRequest:
    image: Image.Image | bytes
    task: Task | str = Task.classification
    label: str | None = None
    vocabulary: list[str] | None = None
    boxes: list[Box] = field(default_factory=list)
    prompt: str | None = None  # template id; default per task
    grid: tuple[int, int] | None = None
    per_instance: bool = False
    return_layers: bool = False


@dataclass
class InstanceMap:
    box: Box
    map: np.ndarray
    answer: str
    answer_status: AnswerStatus
    foreground_tokens: list[str]
    background_tokens: list[str]
    degenerate: bool


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


@dataclass
class _Run:
    """One VLM sequence: a request, or one box of a dense request."""

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


def _validated(req: InteractionRequest, max_pixels: int) -> tuple[InteractionRequest, Image.Image, PromptTemplate]:
    try:
        task = Task(req.task)
    except ValueError:
        raise InvalidRequest(
            f"unknown task {req.task!r}; use one of {[t.value for t in Task]}", code="unknown_task"
        ) from None
    prompt_id = req.prompt or DEFAULT_TEMPLATE[task]
    template = TEMPLATES.get(prompt_id)
    if template is None:
        raise InvalidRequest(f"unknown prompt {prompt_id!r}; use one of {sorted(TEMPLATES)}", code="unknown_prompt")
    if task not in template.tasks:
        raise InvalidRequest(f"prompt {prompt_id!r} is for {[t.value for t in template.tasks]}, not {task.value}")
    if isinstance(req.image, Image.Image):
        check_image_size(*req.image.size, max_pixels=max_pixels)
        image = req.image.convert("RGB")
    else:
        image = decode_image(req.image, max_pixels=max_pixels)
    label = req.label.strip() if isinstance(req.label, str) else req.label
    if label is not None and not (isinstance(label, str) and 0 < len(label) <= MAX_WORD_CHARS):
        raise InvalidRequest(f"label must be a non-empty string of at most {MAX_WORD_CHARS} characters")
    vocabulary = req.vocabulary
    if vocabulary is not None:
        if not isinstance(vocabulary, list) or not vocabulary:
            raise InvalidRequest("vocabulary must be a non-empty list of words", code="empty_vocabulary")
        if len(vocabulary) > MAX_VOCABULARY:
            raise InvalidRequest(f"vocabulary has {len(vocabulary)} words; the limit is {MAX_VOCABULARY}")
        cleaned = [w.strip() if isinstance(w, str) else w for w in vocabulary]
        if any(not isinstance(w, str) or not w or len(w) > MAX_WORD_CHARS or "'" in w for w in cleaned):
            raise InvalidRequest(
                f"vocabulary words must be non-empty strings of at most {MAX_WORD_CHARS} characters without quotes"
            )
        vocabulary = list(dict.fromkeys(cleaned))
    if template.uses_vocabulary and label is None and not vocabulary:
        raise InvalidRequest(
            f"prompt {template.id!r} needs a label (forced foreground) or a vocabulary to choose from",
            code="empty_vocabulary",
        )
    boxes = [b if isinstance(b, Box) else Box.model_validate(b) for b in req.boxes or []]
    if task.is_dense:
        if not boxes:
            raise InvalidRequest(f"task {task.value!r} needs at least one box with a label")
        if len(boxes) > MAX_BOXES:
            raise InvalidRequest(f"{len(boxes)} boxes; the limit is {MAX_BOXES}")
    elif boxes:
        raise InvalidRequest("boxes are only used by detection and segmentation; drop them or change the task")
    for box in boxes:
        x0, y0, x1, y1 = box.xyxy
        if x0 < 0 or y0 < 0 or x1 > image.width or y1 > image.height:
            raise InvalidRequest(
                f"box {list(box.xyxy)} lies outside the {image.width}x{image.height} image", code="box_outside_image"
            )
    grid = req.grid
    if grid is not None:
        if len(grid) != 2 or not all(isinstance(v, int) and 1 <= v <= MAX_GRID for v in grid):
            raise InvalidRequest(f"grid must be [h, w] with integers in 1..{MAX_GRID}")
        grid = (int(grid[0]), int(grid[1]))
    clean = InteractionRequest(
        image=image, task=task, label=label, vocabulary=vocabulary, boxes=boxes, prompt=template.id, grid=grid,
        per_instance=bool(req.per_instance), return_layers=bool(req.return_layers),
    )
    return clean, image, template


class InteractionEngine:
    """Computes C_VLM for batches of requests on one loaded LLaVA model."""

    def __init__(
        self,
        vlm: LoadedVLM,
        settings: ExtractionSettings | None = None,
        *,
        max_batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        answerer=None,
    ) -> None:
        self.vlm = vlm
        self.settings = settings or ExtractionSettings()
        self.max_batch_size = max_batch_size
        self.max_pixels = max_pixels
        processor = vlm.processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.image_processor = processor.image_processor
        config = vlm.model.config
        self.image_token_id = config.image_token_index
        vision = config.vision_config
        self.grid_side = vision.image_size // vision.patch_size
        self.n_image_tokens = self.grid_side**2
        self.max_positions = config.text_config.max_position_embeddings
        self.n_layers = config.text_config.num_hidden_layers
        self._check_settings()
        self._plans: dict[tuple, AnswerPlan] = {}  # read-only once built
        self._plans_lock = threading.Lock()
        self.answerer = answerer or TransformersAnswerer(vlm.model, self.tokenizer)

    @classmethod
    def from_pretrained(cls, model_id: str, *, dtype: str = "float32", device: str = "cpu",
                        revision: str | None = None, answer_backend: str = "transformers",
                        **kwargs) -> InteractionEngine:
        """Load a checkpoint; `answer_backend="vllm"` writes answers with vLLM (optional extra)."""
        if kwargs.get("settings") is None:
            kwargs["settings"] = recommended_settings(model_id)
        engine = cls(load_vlm(model_id, dtype=dtype, device=device, revision=revision), **kwargs)
        if answer_backend == "vllm":
            from services.teacher.engine.vllm_answer import VllmAnswerer
            from shared.settings import get_settings

            engine.answerer = VllmAnswerer(str(model_id), engine.tokenizer, cache_dir=get_settings().cache_dir,
                                           dtype=str(engine.vlm.dtype).removeprefix("torch."))
        elif answer_backend != "transformers":
            raise InvalidRequest(f"unknown answer backend {answer_backend!r}; use 'transformers' or 'vllm'")
        return engine

    def _check_settings(self) -> None:
        n_heads = self.vlm.model.config.text_config.num_attention_heads
        if self.settings.layers is not None and not all(-self.n_layers <= i < self.n_layers
                                                        for i in self.settings.layers):
            raise InvalidRequest(f"layers {self.settings.layers} out of range for {self.n_layers} text layers")
        if self.settings.heads is not None and not all(0 <= h < n_heads for h in self.settings.heads):
            raise InvalidRequest(f"heads {self.settings.heads} out of range for {n_heads} heads")

    @property
    def captured_layers(self) -> list[int]:
        if self.settings.layers is None:
            return list(range(self.n_layers))
        return sorted({i % self.n_layers for i in self.settings.layers})

    # -- public API -------------------------------------------------------------------------------

    def validate(self, request: InteractionRequest) -> tuple[InteractionRequest, Image.Image, PromptTemplate]:
        """Decode and check a request without touching the model: (clean request, image, template).

        Also builds its prompts, so one that cannot fit the context is refused here, before it
        can share a batch with other requests.
        """
        clean, image, template = _validated(request, self.max_pixels)
        if clean.task.is_dense:
            for box in clean.boxes:
                self._plan(template, template.question(target=box.label), box.label, None)
        else:
            self._plan(template, template.question(vocabulary=clean.vocabulary), clean.label, clean.vocabulary)
        return clean, image, template

    def key_settings(self) -> dict:
        """Everything about this engine, beyond the model, that can change a map (part of cache keys)."""
        return {**self.settings.as_dict(), "dtype": str(self.vlm.dtype).removeprefix("torch."),
                "answer_backend": getattr(self.answerer, "name", "custom")}

    def extract(self, request: InteractionRequest) -> InteractionResult:
        return self.extract_batch([request])[0]

    def extract_batch(self, requests: Sequence[InteractionRequest]) -> list[InteractionResult]:
        """All requests are validated before any compute: one bad request fails the call, with its index."""
        started = time.perf_counter()
        validated = []
        for i, req in enumerate(requests):
            try:
                validated.append(_validated(req, self.max_pixels))
            except InvalidRequest as exc:
                if len(requests) > 1:
                    exc.message = f"request {i}: {exc.message}"
                    exc.args = (exc.message,)
                raise
        runs = [run for i, (req, image, template) in enumerate(validated)
                for run in self._runs(i, req, image, template)]
        for chunk in self._chunks(runs):
            self._answer(chunk)
            self._capture(chunk)
        elapsed_ms = (time.perf_counter() - started) * 1000
        results = []
        for i, (req, _, template) in enumerate(validated):
            mine = [run for run in runs if run.request_index == i]
            results.append(self._combine(req, template, mine, elapsed_ms / max(1, len(requests))))
        return results

    # -- steps ------------------------------------------------------------------------------------

    def _runs(self, index: int, req: InteractionRequest, image: Image.Image, template: PromptTemplate) -> list[_Run]:
        fill = self.image_processor.image_mean
        if not req.task.is_dense:
            square, padding = pad_to_square(image, fill)
            plan = self._plan(template, template.question(vocabulary=req.vocabulary), req.label, req.vocabulary)
            return [_Run(index, square, padding, plan, req.label)]
        runs = []
        for box in req.boxes:
            square, padding = pad_to_square(draw_boxes(image, [box]), fill)
            plan = self._plan(template, template.question(target=box.label), box.label, None)
            runs.append(_Run(index, square, padding, plan, box.label, box=box))
        return runs

    def _plan(self, template: PromptTemplate, question: str, label: str | None, vocabulary) -> AnswerPlan:
        """The prompt of one sequence; memoised, since a dataset asks the same question of every image."""
        memo_key = (template.id, template.version, question, label, tuple(vocabulary) if vocabulary else None)
        plan = self._plans.get(memo_key)
        if plan is None:
            plan = self._build_plan(template, question, label, vocabulary)
            with self._plans_lock:  # validation threads and the GPU thread both fill it
                if len(self._plans) >= 4096:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[memo_key] = plan
        return plan

    def _build_plan(self, template: PromptTemplate, question: str, label: str | None, vocabulary) -> AnswerPlan:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        chat_text = self.vlm.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        plan = plan_answer(self.tokenizer, template, chat_text, label=label, vocabulary=vocabulary)
        budget = len(plan.prompt_ids) + self.n_image_tokens + template.max_new_tokens + 32
        if budget > self.max_positions:
            raise InvalidRequest(
                f"prompt is {len(plan.prompt_ids)} tokens plus {self.n_image_tokens} image tokens, over the "
                f"model's {self.max_positions}-token context; shorten the vocabulary", code="prompt_too_long"
            )
        return plan

    def _chunks(self, runs: list[_Run]) -> list[list[_Run]]:
        # Similar lengths together: less padding in every batch.
        ordered = sorted(runs, key=lambda r: len(r.plan.prompt_ids))
        return [ordered[i : i + self.max_batch_size] for i in range(0, len(ordered), self.max_batch_size)]

    def _expand(self, ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for token in ids:
            out.extend([token] * self.n_image_tokens if token == self.image_token_id else [token])
        return out

    def _batch(self, sequences: list[list[int]], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (length - len(s)) + s for s in sequences])
        mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences])
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        device = self.vlm.device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
                "pixel_values": pixels.to(device, self.vlm.dtype)}

    def _answer(self, runs: list[_Run]) -> None:
        batch = self._batch([self._expand(r.plan.prompt_ids) for r in runs], [r.image for r in runs])
        generated = self.answerer.generate([r.plan for r in runs], batch, images=[r.image for r in runs])
        for run, new_tokens in zip(runs, generated, strict=True):
            run.generated = new_tokens
            answer_ids = run.plan.prompt_ids[run.plan.answer_start :] + new_tokens
            text, offsets = token_offsets(self.tokenizer, answer_ids)
            run.answer = text.strip()
            run.parsed = parse_answer(run.plan.template, text, run.plan.vocabulary)
            run.fore_rows = _tokens_in(run.parsed.foreground, offsets, text)
            run.back_rows = _tokens_in(run.parsed.background, offsets, text)
            pieces = [self.tokenizer.decode([t]) for t in answer_ids]
            run.fore_tokens = [pieces[i] for i in run.fore_rows]
            run.back_tokens = [pieces[i] for i in run.back_rows]

    @torch.no_grad()
    def _capture(self, runs: list[_Run]) -> None:
        sequences = [self._expand(r.plan.prompt_ids) + r.generated for r in runs]
        batch = self._batch(sequences, [r.image for r in runs])
        length = batch["input_ids"].shape[1]
        rows, cols = [], []
        for run, seq in zip(runs, sequences, strict=True):
            # answer token i sits at (left padding) + (expanded prompt before the answer) + i
            offset = length - len(seq) + len(self._expand(run.plan.prompt_ids[: run.plan.answer_start]))
            shift = 1 if self.settings.rows == "predicting" else 0
            picked = [offset + i - shift for i in run.fore_rows + run.back_rows] or [length - 1]
            rows.append(picked)
            image_positions = (batch["input_ids"][len(rows) - 1] == self.image_token_id).nonzero().squeeze(1)
            cols.append(image_positions)
        width = max(len(r) for r in rows)
        rows_t = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows])
        cols_t = torch.stack(cols)
        # Left padding shifts every position; RoPE must see each sequence's own positions.
        position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with capturing(self.vlm.model, rows_t, cols_t, layers=self.captured_layers,
                       heads=self.settings.heads, head_reduce=self.settings.head_reduce) as session:
            # Only the attention is needed: skip the LM head over the whole sequence.
            self.vlm.model.model(**batch, position_ids=position_ids)
        layers = self.captured_layers
        stacked = torch.stack([session.captured[layer] for layer in layers], dim=0).cpu().numpy()  # (L, B, A, N)
        for b, run in enumerate(runs):
            n_fore = len(run.fore_rows)
            run.fore = stacked[:, b, :n_fore].mean(axis=1) if n_fore else None
            run.back = stacked[:, b, n_fore : n_fore + len(run.back_rows)].mean(axis=1) if run.back_rows else None

    # -- maps ---------------------------------------------------------------------------------------

    def _contrast(self, fore: np.ndarray | None, back: np.ndarray | None) -> np.ndarray | None:
        """max(0, C_fore - C_back) per layer row, each term renormalised over the image tokens first."""
        if fore is None:
            return None
        diff = _rownorm(fore) - (_rownorm(back) if back is not None else 0.0)
        return np.maximum(diff, 0.0)

    def _to_image(self, square: np.ndarray | None, padding: SquarePadding, grid) -> tuple[np.ndarray, bool]:
        """Token grid over the padded square -> normalised map over the image; uniform + True when degenerate."""
        side = self.grid_side
        shape = grid or _native(padding, side)
        if square is None:
            return np.full(shape, 1.0 / (shape[0] * shape[1]), np.float32), True
        mass, _ = crop_and_resample(square.reshape(side, side), padding, shape)
        normalised = normalise(mass)
        if normalised is None:
            return np.full(shape, 1.0 / (shape[0] * shape[1]), np.float32), True
        return normalised.astype(np.float32), False

    def _combine(self, req: InteractionRequest, template: PromptTemplate, runs: list[_Run],
                 compute_ms: float) -> InteractionResult:
        padding = runs[0].padding
        contrasts = []
        for run in runs:
            fore_mean = run.fore.mean(axis=0) if run.fore is not None else None
            back_mean = run.back.mean(axis=0) if run.back is not None else None
            contrasts.append((fore_mean, back_mean))
        if req.task.is_dense:
            # eq. 12: sum the instances' object maps, minus their background maps.
            fores = [_rownorm(f) for f, _ in contrasts if f is not None]
            backs = [_rownorm(b) for _, b in contrasts if b is not None]
            total = np.maximum(sum(fores) - sum(backs), 0.0) if fores else None
        else:
            total = self._contrast(*contrasts[0])  # eq. 11
        image_map, degenerate = self._to_image(total, padding, req.grid)
        statuses = [run.parsed.status for run in runs]
        worst = next((s for s in (AnswerStatus.malformed, AnswerStatus.off_vocabulary, AnswerStatus.no_background)
                      if s in statuses), AnswerStatus.ok)
        messages = "; ".join(run.parsed.message for run in runs if run.parsed.message)
        instances = None
        if req.per_instance and req.task.is_dense:
            instances = []
            for run, (f, b) in zip(runs, contrasts, strict=True):
                m, deg = self._to_image(self._contrast(f, b), run.padding, req.grid)
                instances.append(InstanceMap(run.box, m, run.answer, run.parsed.status, run.fore_tokens,
                                             run.back_tokens, deg))
        layer_maps = None
        if req.return_layers:
            per_layer = []
            for li in range(len(self.captured_layers)):
                if req.task.is_dense:
                    fores = [_rownorm(r.fore[li]) for r in runs if r.fore is not None]
                    backs = [_rownorm(r.back[li]) for r in runs if r.back is not None]
                    square = np.maximum(sum(fores) - sum(backs), 0.0) if fores else None
                else:
                    run = runs[0]
                    square = self._contrast(run.fore[li] if run.fore is not None else None,
                                            run.back[li] if run.back is not None else None)
                per_layer.append(self._to_image(square, padding, req.grid)[0])
            layer_maps = np.stack(per_layer)
        return InteractionResult(
            map=image_map,
            answer=" | ".join(run.answer for run in runs) if len(runs) > 1 else runs[0].answer,
            answer_status=worst,
            answer_message=messages,
            foreground_tokens=[t for run in runs for t in run.fore_tokens],
            background_tokens=[t for run in runs for t in run.back_tokens],
            degenerate=degenerate,
            model=self.vlm.identity,
            prompt=f"{template.id}@v{template.version}",
            compute_ms=compute_ms,
            instances=instances,
            layers=layer_maps,
        )


def _rownorm(x: np.ndarray) -> np.ndarray:
    total = x.sum(axis=-1, keepdims=True)
    return np.divide(x, total, out=np.zeros_like(x), where=total > 0)


def _native(padding: SquarePadding, side: int) -> tuple[int, int]:
    return native_grid((side, side), padding)


def _tokens_in(spans, offsets: list[tuple[int, int]], text: str) -> list[int]:
    """Indices of tokens that overlap a word span and carry a letter or digit themselves."""
    picked = []
    for i, (start, end) in enumerate(offsets):
        if not any(c.isalnum() for c in text[start:end]):
            continue
        if any(start < s.end and s.start < end for s in spans):
            picked.append(i)
    return picked

