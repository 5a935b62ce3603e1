"""Content-addressed cache keys: the same pixels and the same question give the same key.

The key hashes the *decoded* RGB pixels and size (a re-encoded identical image
hits) and every input that changes the map. A client computes it with the
teacher's `GET /info` values and its own decoded pixels, then reads maps by key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from PIL import Image

MAP_KEY_PREFIX = "lfi:map:"
KEY_SCHEMA_VERSION = 1


def pixel_digest(image: Image.Image) -> str:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:RGB:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def map_key(
    *,
    pixels: str,
    task: str,
    label: str | None,
    vocabulary: Sequence[str] | None,
    boxes: Sequence[dict] | None,
    prompt: str,
    prompt_version: int,
    grid: Sequence[int] | None,
    per_instance: bool,
    return_layers: bool,
    extraction: dict[str, Any],
    model_id: str,
    model_revision: str,
    background: str | None = None,
    system_prompt: str | None = None,
) -> str:
    """sha256 over a canonical JSON of everything that changes the response."""
    canonical = {
        "v": KEY_SCHEMA_VERSION,
        "pixels": pixels,
        "task": str(task),
        "label": label,
        "vocabulary": list(vocabulary) if vocabulary else None,
        "boxes": [{"xyxy": [float(v) for v in b["xyxy"]], "label": b["label"]} for b in boxes or []],
        "prompt": [prompt, int(prompt_version)],
        "grid": list(grid) if grid else None,
        "per_instance": bool(per_instance),
        "return_layers": bool(return_layers),
        "extraction": extraction,
        "model": [model_id, model_revision],
    }
    if background is not None:  # only when given, so every key made before the field existed still holds
        canonical["background"] = background
    # A request's own system prompt, where it differs from the teacher's (which `extraction` holds):
    # a client that does not name one computes its keys from /info alone.
    if system_prompt is not None and system_prompt != extraction.get("system_prompt"):
        canonical["system_prompt"] = system_prompt
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()
