"""Model names users type: "builtin:<preset>" builds (or finds) a checkpoint folder; others pass through.

This is the one module that knows both the builder and the trainer, so neither imports the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from services.teacher.tiny.build import PRESETS, build_tiny_checkpoint
from shared.errors import InvalidRequest

log = logging.getLogger("lfi.teacher.tiny")

BUILTIN_PREFIX = "builtin:"
BUILTIN_VERSION = 1  # bump when the builder's output changes, so caches rebuild


# The tiny teacher trained on the synthetic shapes (`lfi teacher train-tiny`), shipped in the package.
TRAINED_NAME = "tiny-synth"
TRAINED_SPEC = BUILTIN_PREFIX + TRAINED_NAME
SHIPPED_DIR = Path(__file__).with_name("checkpoints") / TRAINED_NAME


def _trained_folder(cache_dir: Path) -> Path:
    """The shipped trained teacher; when a checkout lacks it, train it once into the cache (minutes)."""
    if (SHIPPED_DIR / "model.safetensors").is_file():
        return SHIPPED_DIR
    folder = Path(cache_dir) / f"{TRAINED_NAME}-v{BUILTIN_VERSION}"
    if not (folder / "model.safetensors").is_file():
        from services.teacher.tiny.train import train_tiny_teacher  # torch training code: only when needed

        log.warning(
            "no shipped %s checkpoint; training it into %s (a few minutes, once)", TRAINED_NAME, folder)
        train_tiny_teacher(folder)
    return folder


def resolve_model(spec: str, cache_dir: Path) -> str:
    """Turn "builtin:<name>" into a checkpoint folder (built once, then reused); pass others through."""
    if not spec.startswith(BUILTIN_PREFIX):
        return spec
    preset = spec[len(BUILTIN_PREFIX):]
    if preset == TRAINED_NAME:
        return str(_trained_folder(Path(cache_dir)))
    if preset not in PRESETS:
        choices = "|".join([TRAINED_NAME, *PRESETS])
        raise InvalidRequest(f"unknown built-in model {spec!r}; choose builtin:<{choices}>")
    folder = Path(cache_dir) / f"{preset}-llava-v{BUILTIN_VERSION}"
    if not (folder / "model.safetensors").exists():
        build_tiny_checkpoint(folder, preset)
    return str(folder)
