"""Engine results as the REST contract's JSON bytes (`cached` first, so a hit is a byte patch)."""

from __future__ import annotations

import orjson

from services.teacher.engine.extraction import InteractionResult
from shared.codec import encode_map

CACHED_FALSE = b'{"cached":false'
CACHED_TRUE = b'{"cached":true'


def result_json(result: InteractionResult, key: str) -> bytes:
    body = {
        "cached": False,
        "key": key,
        "map": encode_map(result.map),
        "question": result.question,
        "answer": result.answer,
        "answer_status": result.answer_status.value,
        "answer_message": result.answer_message,
        "foreground_tokens": result.foreground_tokens,
        "background_tokens": result.background_tokens,
        "instances": None if result.instances is None else [
            {"box": inst.box.model_dump(mode="json"), "map": encode_map(inst.map), "answer": inst.answer,
             "answer_status": inst.answer_status.value, "foreground_tokens": inst.foreground_tokens,
             "background_tokens": inst.background_tokens, "degenerate": inst.degenerate,
             "question": inst.question}
            for inst in result.instances
        ],
        "layers": None if result.layers is None else encode_map(result.layers),
        "model": {"id": result.model.id, "revision": result.model.revision},
        "prompt": result.prompt,
        "compute_ms": round(result.compute_ms, 3),
        "degenerate": result.degenerate,
    }
    return orjson.dumps(body)


def as_cached(stored: bytes) -> bytes:
    if stored.startswith(CACHED_FALSE):
        return CACHED_TRUE + stored[len(CACHED_FALSE):]
    return stored
