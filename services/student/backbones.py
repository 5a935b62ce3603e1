"""A job's `init` as a folder or hub id: "builtin:<name>" is a backbone shipped in services/student/pretrained/.

The names a job may give are listed in shared.student_names (the dashboard validates against them without
importing the student); tests/student/test_backbones.py checks that the shipped folders are those names.
"""

from __future__ import annotations

from pathlib import Path

from shared.student_names import BUILTIN_PREFIX, INIT_CHOICES, PRETRAINED_BACKBONES

PRETRAINED_DIR = Path(__file__).with_name("pretrained")


def shipped_backbones() -> list[str]:
    """The backbone folders present in this checkout."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "model.safetensors").is_file())


def resolve_init(init: str) -> str:
    """'scratch', a hub id and a folder pass through; "builtin:<name>" becomes the shipped folder."""
    if not init.startswith(BUILTIN_PREFIX):
        return init
    name = init[len(BUILTIN_PREFIX):]
    if name not in PRETRAINED_BACKBONES:
        raise ValueError(f"init: unknown built-in backbone {init!r}; choose one of {' | '.join(INIT_CHOICES)}")
    folder = PRETRAINED_DIR / name
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"init {init!r}: {folder} has no model.safetensors; this checkout lacks the shipped "
                                f"backbone: rebuild it with `lfi student pretrain {folder} --seed 0` (see its README)")
    return str(folder)
