"""How well a teacher's maps point at the object: mass inside the synthetic ground-truth masks.

A uniform map puts exactly the mask's area fraction inside the mask, so `inside / area` is the
number that matters: 1 is no better than uniform. The trained tiny teacher's recommended layers
and rows (`lfi_extraction.json`) are chosen here, on held-out images, never on training ones.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
from services.teacher.engine.extraction_settings import EXTRACTION_FILE, ROW_CHOICES, ExtractionSettings
from shared.synth import CLASSES, UNIFORM_CORRELATION, Sample, make_sample

HELD_OUT_SEED = 7  # image stream for scoring; the teacher trains on another seed's "train" split


def held_out_samples(n: int, *, seed: int = HELD_OUT_SEED, image_size: int = 64) -> list[Sample]:
    return [make_sample("val", k % len(CLASSES), k // len(CLASSES), seed=seed, correlation=UNIFORM_CORRELATION,
                        image_size=image_size) for k in range(n)]


def mass_inside(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each map's mass inside `mask`; maps (..., H, W) over the image's pixels."""
    return (maps * mask).sum(axis=(-2, -1)) / np.maximum(maps.sum(axis=(-2, -1)), 1e-12)


@dataclass
class MapScore:
    """Mean mass inside the mask: per captured layer, for the combined map, and the uniform score."""

    settings: dict
    area: float
    combined: float
    per_layer: dict[int, float] = field(default_factory=dict)
    degenerate: float = 0.0

    @property
    def ratio(self) -> float:
        return self.combined / self.area


def score(engine: InteractionEngine, samples: list[Sample], *, layers: bool = True, batch: int = 16) -> MapScore:
    """Ask as the student's trainer does (label forced) and score every map against its mask."""
    requests = [InteractionRequest(image=Image.fromarray(s.image), label=s.cls, grid=s.mask.shape,
                                   return_layers=layers) for s in samples]
    results = []
    for i in range(0, len(requests), batch):
        results.extend(engine.extract_batch(requests[i : i + batch]))
    area = float(np.mean([s.mask.mean() for s in samples]))
    combined = float(np.mean([mass_inside(r.map, s.mask) for r, s in zip(results, samples, strict=True)]))
    per_layer = {}
    if layers:
        stacked = np.stack([mass_inside(r.layers, s.mask) for r, s in zip(results, samples, strict=True)])
        per_layer = {layer: float(stacked[:, i].mean()) for i, layer in enumerate(engine.captured_layers)}
    return MapScore(engine.settings.as_dict(), area, combined, per_layer,
                    float(np.mean([r.degenerate for r in results])))


def choose_extraction(model_dir: str | Path, samples: list[Sample]) -> tuple[ExtractionSettings, list[MapScore]]:
    """The rows setting and the layer subset whose combined map puts most mass inside the masks.

    Every subset is tried for models of up to 6 text layers (63 subsets); deeper models keep all
    layers and only the rows setting is chosen.
    """
    # The tiny teacher learns its answers without a system prompt (train.ExampleBuilder): ask it so.
    base = InteractionEngine.from_pretrained(str(model_dir), settings=ExtractionSettings(system_prompt="none"))
    n_layers = base.n_layers
    tried: list[MapScore] = []
    best: tuple[float, ExtractionSettings] | None = None
    for rows in ROW_CHOICES:
        subsets = [None]
        if n_layers <= 6:
            subsets = [tuple(c) for k in range(1, n_layers + 1) for c in itertools.combinations(range(n_layers), k)]
        for subset in subsets:
            base.settings = ExtractionSettings(layers=subset, rows=rows, system_prompt="none")
            result = score(base, samples, layers=subset is None or len(subset) == n_layers)
            tried.append(result)
            if best is None or result.combined > best[0] + 1e-9:
                best = (result.combined, base.settings)
    return best[1], tried


def write_recommendation(model_dir: str | Path, settings: ExtractionSettings, evidence: dict) -> Path:
    path = Path(model_dir) / EXTRACTION_FILE
    path.write_text(json.dumps({"layers": list(settings.layers) if settings.layers is not None else None,
                                "rows": settings.rows, "head_reduce": settings.head_reduce,
                                "system_prompt": settings.system_prompt, "evidence": evidence}, indent=2))
    return path
