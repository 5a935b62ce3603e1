"""The teacher engine: requests in, interaction maps C_VLM out. No HTTP here.

One request becomes one VLM sequence (classification) or one per box (dense
tasks, each box drawn alone as the visual prompt). Sequences run in padded
batches. By default (`capture="decode"`) the answer is generated with the
attention capture riding along, so a cold map costs one pass over the image and
prompt; `capture="second-pass"` generates first and then runs a teacher-forced
forward over prompt + answer (kept for checking: same maps). A sequence whose
whole answer is forced is never generated: one forward.

`InteractionEngine` only orchestrates; each part has its own module: requests
(validation), planning (prompts), runs (sequences and batches), encoding (tensors),
steps (answer and capture passes), maps (eqs. 11 and 12), results (assembly).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from PIL import Image

from services.teacher.engine.answer import Answerer
from services.teacher.engine.decoding import TransformersAnswerer
from services.teacher.engine.encoding import BatchEncoder
from services.teacher.engine.extraction_settings import (
    EXTRACTION_FILE,
    ROW_CHOICES,
    ExtractionSettings,
    recommended_settings,
)
from services.teacher.engine.loading import LoadedVLM, load_vlm
from services.teacher.engine.planning import PromptPlanner
from services.teacher.engine.prompts import PromptTemplate
from services.teacher.engine.requests import InteractionRequest, ValidRequest, validate_request
from services.teacher.engine.results import InstanceMap, InteractionResult, assemble
from services.teacher.engine.runs import Run, chunks, make_runs
from services.teacher.engine.steps import answer_step, capture_step, decode_step, forced_step
from services.teacher.settings import TeacherSettings
from shared.errors import InvalidRequest

# Re-exported: callers (serving, tiny, README) import these names from here.
__all__ = [
    "CAPTURE_MODES",
    "EXTRACTION_FILE",
    "ROW_CHOICES",
    "CaptureMode",
    "ExtractionSettings",
    "InstanceMap",
    "InteractionEngine",
    "InteractionRequest",
    "InteractionResult",
    "ValidRequest",
    "recommended_settings",
]

_DEFAULTS = TeacherSettings.defaults()
CaptureMode = Literal["decode", "second-pass"]
CAPTURE_MODES: tuple[str, ...] = ("decode", "second-pass")


class InteractionEngine:
    """Computes C_VLM for batches of requests on one loaded LLaVA model."""

    def __init__(
        self,
        vlm: LoadedVLM,
        settings: ExtractionSettings | None = None,
        *,
        max_batch_size: int = _DEFAULTS.max_batch_size,
        max_pixels: int = _DEFAULTS.max_pixels,
        answerer: Answerer | None = None,
        capture: CaptureMode | None = None,
    ) -> None:
        self.vlm = vlm
        self.settings = settings or ExtractionSettings()
        self.max_batch_size = max_batch_size
        self.max_pixels = max_pixels
        processor = vlm.processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # batches are left-padded (see BatchEncoder)
        self.image_processor = processor.image_processor
        config = vlm.model.config
        self.image_token_id = config.image_token_index
        vision = config.vision_config
        self.grid_side = vision.image_size // vision.patch_size
        self.n_image_tokens = self.grid_side**2
        self.max_positions = config.text_config.max_position_embeddings
        self.n_layers = config.text_config.num_hidden_layers
        self.settings.check_fits(self.n_layers, config.text_config.num_attention_heads)
        self.planner = PromptPlanner(processor, n_image_tokens=self.n_image_tokens, max_positions=self.max_positions)
        self.encoder = BatchEncoder(vlm, self.n_image_tokens)
        self._asked_capture = capture
        self.answerer = answerer or TransformersAnswerer(vlm.model, self.tokenizer)

    @property
    def answerer(self) -> Answerer:
        return self._answerer

    @answerer.setter
    def answerer(self, answerer: Answerer) -> None:
        """A new answerer settles the capture mode again: decode needs answers written in this process."""
        self.capture = self._capture_mode(self._asked_capture, answerer)
        self._answerer = answerer

    @classmethod
    def from_pretrained(cls, model_id: str, *, dtype: str = "float32", device: str = "cpu",
                        revision: str | None = None, answer_backend: str = "transformers",
                        cache_dir: str | Path | None = None, **kwargs) -> InteractionEngine:
        """Load a checkpoint; `answer_backend="vllm"` writes answers with vLLM (optional extra).

        `cache_dir` is where vLLM's renamed copy of the weights goes (None: the default cache folder).
        """
        if kwargs.get("settings") is None:
            kwargs["settings"] = recommended_settings(model_id)
        engine = cls(load_vlm(model_id, dtype=dtype, device=device, revision=revision), **kwargs)
        if answer_backend == "vllm":
            from services.teacher.engine.vllm_answer import VllmAnswerer

            engine.answerer = VllmAnswerer(str(model_id), engine.tokenizer, cache_dir=cache_dir,
                                           dtype=str(engine.vlm.dtype).removeprefix("torch."))
        elif answer_backend != "transformers":
            raise InvalidRequest(f"unknown answer backend {answer_backend!r}; use 'transformers' or 'vllm'")
        return engine

    @staticmethod
    def _capture_mode(asked: CaptureMode | None, answerer: Answerer) -> CaptureMode:
        """`decode` where the answerer runs the model here (the default), else `second-pass`."""
        in_process = getattr(answerer, "captures_while_decoding", False)
        if asked is None:
            return "decode" if in_process else "second-pass"
        if asked not in CAPTURE_MODES:
            raise InvalidRequest(f"unknown capture mode {asked!r}; use one of {', '.join(CAPTURE_MODES)}")
        if asked == "decode" and not in_process:
            raise InvalidRequest(f"capture='decode' needs the answers written in this process; the "
                                 f"{getattr(answerer, 'name', 'custom')} backend needs capture='second-pass'")
        return asked

    @property
    def captured_layers(self) -> list[int]:
        return self.settings.captured_layers(self.n_layers)

    # -- public API -------------------------------------------------------------------------------

    def validate(self, request: InteractionRequest) -> tuple[ValidRequest, Image.Image, PromptTemplate]:
        """Decode and check a request without touching the model: (valid request, its image, its template).

        Also builds its prompts, so one that cannot fit the context is refused here, before it
        can share a batch with other requests. `extract_batch` takes the ValidRequest as it is.
        """
        valid = validate_request(request, max_pixels=self.max_pixels)
        self.planner.sequences(valid, self.system_prompt(valid))
        return valid, valid.image, valid.template

    def system_prompt(self, request: ValidRequest) -> str:
        """The system prompt a request is asked under: its own, else the engine's setting."""
        return request.system_prompt or self.settings.system_prompt

    def key_settings(self) -> dict:
        """Everything about this engine, beyond the model, that can change a map (part of cache keys)."""
        return {**self.settings.as_dict(), "dtype": str(self.vlm.dtype).removeprefix("torch."),
                "answer_backend": getattr(self.answerer, "name", "custom")}

    def extract(self, request: InteractionRequest | ValidRequest) -> InteractionResult:
        return self.extract_batch([request])[0]

    def extract_batch(self, requests: Sequence[InteractionRequest | ValidRequest]) -> list[InteractionResult]:
        """All requests are validated before any compute: one bad request fails the call, with its index."""
        started = time.perf_counter()
        valid = self._validate_all(requests)
        runs = [run for i, request in enumerate(valid) for run in self._runs(i, request)]
        for chunk in chunks(runs, self.max_batch_size):
            self._compute(chunk)
        compute_ms = (time.perf_counter() - started) * 1000 / max(1, len(requests))
        by_request: list[list[Run]] = [[] for _ in valid]
        for run in runs:
            by_request[run.request_index].append(run)
        return [assemble(request, mine, side=self.grid_side, n_layers=len(self.captured_layers),
                         model=self.vlm.identity, compute_ms=compute_ms)
                for request, mine in zip(valid, by_request, strict=True)]

    # -- steps ------------------------------------------------------------------------------------

    def _validate_all(self, requests: Sequence[InteractionRequest | ValidRequest]) -> list[ValidRequest]:
        valid = []
        for i, request in enumerate(requests):
            if isinstance(request, ValidRequest):
                valid.append(request)
                continue
            try:
                valid.append(self.validate(request)[0])
            except InvalidRequest as exc:
                if len(requests) > 1:
                    exc.message = f"request {i}: {exc.message}"
                    exc.args = (exc.message,)
                raise
        return valid

    def _runs(self, index: int, request: ValidRequest) -> list[Run]:
        return make_runs(index, request.image, request.label,
                         self.planner.sequences(request, self.system_prompt(request)), self.image_processor.image_mean)

    def _compute(self, runs: list[Run]) -> None:
        """Answers and rows of one chunk: one forward where the answer is forced, else per `self.capture`."""
        model, layers = self.vlm.model, self.captured_layers
        forced = [r for r in runs if r.plan.complete]
        free = [r for r in runs if not r.plan.complete]
        if forced:
            forced_step(forced, model, self.encoder, self.settings, layers)
        if free and self.capture == "decode":
            decode_step(free, self.answerer, self.encoder, model, self.settings, layers)
        elif free:
            answer_step(free, self.answerer, self.encoder)
            capture_step(free, model, self.encoder, self.settings, layers)
