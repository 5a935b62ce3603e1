"""The teacher demo: build the offline tiny LLaVA, ask it where it looks, save pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("stripes", "dots", "noise")


def demo_image(shape: str, background: str, seed: int, size: int = 256) -> tuple[Image.Image, tuple[int, ...]]:
    """A coloured shape on a textured background; returns the image and the shape's box."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(120, 200, 3)))
    draw = ImageDraw.Draw(canvas)
    ink = tuple(int(v) for v in rng.integers(60, 110, 3))
    if background == "stripes":
        for x in range(0, size, 16):
            draw.rectangle((x, 0, x + 7, size), fill=ink)
    elif background == "dots":
        for x in range(8, size, 24):
            for y in range(8, size, 24):
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=ink)
    else:
        noise = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        canvas = Image.blend(canvas, Image.fromarray(noise), 0.4)
        draw = ImageDraw.Draw(canvas)
    extent = int(rng.integers(size // 4, size // 2))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
    box = (x0, y0, x0 + extent, y0 + extent)
    colour = tuple(int(v) for v in rng.integers(0, 255, 3))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0 + extent // 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=colour)
    return canvas, box


def run_demo(model_dir: str, out: Path, *, n_images: int = 6, progress=None) -> list[dict]:
    from services.teacher.engine import InteractionEngine, InteractionRequest
    from services.teacher.overlay import overlay

    engine = InteractionEngine.from_pretrained(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        shape, background = SHAPES[i % len(SHAPES)], BACKGROUNDS[(i // len(SHAPES)) % len(BACKGROUNDS)]
        image, _box = demo_image(shape, background, seed=i)
        result = engine.extract(InteractionRequest(image=image, vocabulary=list(SHAPES), grid=(14, 14)))
        name = f"{i:02d}-{shape}-on-{background}"
        image.save(out / f"{name}.png")
        overlay(image, result.map).save(out / f"{name}-map.png")
        np.save(out / f"{name}-map.npy", result.map)
        rows.append({"image": name, "truth": shape, "answer": result.answer, "status": result.answer_status.value,
                     "degenerate": result.degenerate, "compute_ms": round(result.compute_ms, 1)})
        if progress is not None:
            progress()
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    return rows
