"""How attention becomes a map (layers, heads, rows), and the choice a checkpoint recommends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InvalidRequest

ROW_CHOICES = ("word", "predicting")
SYSTEM_PROMPT_CHOICES = ("llava", "none")  # prompts.SYSTEM_PROMPTS holds their text
EXTRACTION_FILE = "lfi_extraction.json"


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
    # The system prompt the question is asked under: "llava", LLaVA-1.5's own (vicuna_v1, what it was
    # trained with), or "none". Not attention, but it changes every map, so it lives with the rest.
    system_prompt: str = "llava"

    def __post_init__(self) -> None:
        if self.head_reduce not in {"mean", "max"}:
            raise InvalidRequest(f"head_reduce must be 'mean' or 'max', got {self.head_reduce!r}")
        if self.rows not in ROW_CHOICES:
            raise InvalidRequest(f"rows must be one of {', '.join(ROW_CHOICES)}, got {self.rows!r}")
        if self.system_prompt not in SYSTEM_PROMPT_CHOICES:
            raise InvalidRequest(f"system_prompt must be one of {', '.join(SYSTEM_PROMPT_CHOICES)}, "
                                 f"got {self.system_prompt!r}")

    def as_dict(self) -> dict:
        return {"layers": self.layers, "heads": self.heads, "head_reduce": self.head_reduce, "rows": self.rows,
                "system_prompt": self.system_prompt, "version": 3}

    def check_fits(self, n_layers: int, n_heads: int) -> None:
        """Refuse layers or heads the model does not have (negative layers count from the end)."""
        if self.layers is not None and not all(-n_layers <= i < n_layers for i in self.layers):
            raise InvalidRequest(f"layers {self.layers} out of range for {n_layers} text layers")
        if self.heads is not None and not all(0 <= h < n_heads for h in self.heads):
            raise InvalidRequest(f"heads {self.heads} out of range for {n_heads} heads")

    def captured_layers(self, n_layers: int) -> list[int]:
        if self.layers is None:
            return list(range(n_layers))
        return sorted({i % n_layers for i in self.layers})


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
                                  rows=data.get("rows", "word"), head_reduce=data.get("head_reduce", "mean"),
                                  system_prompt=data.get("system_prompt", "llava"))
    except (ValueError, TypeError, AttributeError, InvalidRequest) as exc:
        raise InvalidRequest(f"{path} is not a valid extraction file ({exc}); delete it or fix it") from None
