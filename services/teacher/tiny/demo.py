"""The teacher demo: ask the teacher where it looks on synthetic images, save pictures and scores.

The images come from `shared.synth` (the shapes and textures the trained tiny teacher learned),
each with its ground-truth mask, so the demo can say how much of the map lands on the shape.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from PIL import Image

from shared.synth import CLASSES, UNIFORM_CORRELATION, make_sample

DEMO_SEED = 11  # an image stream neither the teacher nor the default student data set uses
VIEW_SCALE = 4  # the 64 px images are saved 4x larger so the overlays can be seen


def demo_sample(index: int):
    """Image `index` of the demo: the shapes in turn, each on a texture drawn at random."""
    return make_sample("val", index % len(CLASSES), index // len(CLASSES), seed=DEMO_SEED,
                       correlation=UNIFORM_CORRELATION)


def run_demo(model_dir: str, out: Path, *, n_images: int = 8, progress=None) -> list[dict]:
    from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
    from services.teacher.engine.overlay import overlay_with_scale

    engine = InteractionEngine.from_pretrained(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        sample = demo_sample(i)
        image = Image.fromarray(sample.image)
        result = engine.extract(InteractionRequest(image=image, vocabulary=list(CLASSES), grid=sample.mask.shape))
        inside = float((result.map * sample.mask).sum())
        name = f"{i:02d}-{sample.cls}-on-{sample.background}"
        big = image.resize((image.width * VIEW_SCALE, image.height * VIEW_SCALE), Image.Resampling.NEAREST)
        big.save(out / f"{name}.png")
        overlay_with_scale(big, result.map).save(out / f"{name}-map.png")
        np.save(out / f"{name}-map.npy", result.map)
        rows.append({"image": name, "truth": f"{sample.cls} on {sample.background}", "answer": result.answer,
                     "status": result.answer_status.value, "degenerate": result.degenerate,
                     "mass_on_shape": round(inside, 3), "shape_area": round(float(sample.mask.mean()), 3),
                     "compute_ms": round(result.compute_ms, 1)})
        if progress is not None:
            progress()
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "index.html").write_text(index_html(rows))
    return rows


def index_html(rows: list[dict]) -> str:
    """One page with every image beside its overlay and colour bar, and what the teacher said."""
    cells = []
    for row in rows:
        name = html.escape(row["image"], quote=True)
        cells.append(
            f'<figure><img src="{name}.png" alt="{name}"><img src="{name}-map.png" alt="{name} map">'
            f'<figcaption>{html.escape(row["truth"])} · answer {html.escape(str(row["answer"]))} · '
            f'{100 * row["mass_on_shape"]:.0f} % of the map on the shape ({100 * row["shape_area"]:.0f} % of '
            f'the image)</figcaption></figure>')
    return ("<!doctype html><meta charset='utf-8'><title>lfi teacher demo</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:1rem}figure{margin:0 0 1rem}"
            "img{image-rendering:pixelated;margin-right:8px;vertical-align:top}</style>"
            "<h1>Where the teacher looks</h1><p>Each map over its image: low values are transparent, "
            "colour and opacity grow with the map's value (scale beside each map, 0 to its peak).</p>"
            + "\n".join(cells))
