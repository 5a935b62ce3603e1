"""What a student is built as: the interaction modes, the named geometries, and the ViT config.

The names a job may use (`model`, `student`, `ablation`) live in shared/student_names.py; the
tables here are keyed by them and this module refuses to import if they drift apart.
(transformers' split, configuration beside modeling: services/student/model.py builds the model.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import ViTConfig

from shared.student_names import (
    ABLATION_NAMES,
    MODEL_DEPTHS,
    MODEL_NAMES,
    STUDENT_KINDS,
    AblationName,
    AlignRowsName,
    ModelName,
    StudentKind,
)

ModeName = Literal["off", "full", "no-constraint", "constraint-on-original", "no-gate"]
AlignRows = AlignRowsName


@dataclass(frozen=True)
class InteractionMode:
    """What a mode builds into each attention layer, and which attention the alignment loss constrains."""

    has_queries: bool  # interaction queries W'_q, hence C_AGT
    has_gate: bool  # the gated control network; without it C_F = (C_AGT + C_VFM) / 2
    constrained: Literal["agt", "vfm"] | None  # None: no alignment loss

    @property
    def aligned(self) -> bool:
        return self.constrained is not None


MODES: dict[ModeName, InteractionMode] = {
    "off": InteractionMode(has_queries=False, has_gate=False, constrained=None),  # the plain ViT baseline
    "full": InteractionMode(has_queries=True, has_gate=True, constrained="agt"),  # I-ViT
    # Table 3: extra queries and gate, no alignment loss
    "no-constraint": InteractionMode(has_queries=True, has_gate=True, constrained=None),
    # Table 3: no new parts, the layer's own queries are aligned
    "constraint-on-original": InteractionMode(has_queries=False, has_gate=False, constrained="vfm"),
    "no-gate": InteractionMode(has_queries=True, has_gate=False, constrained="agt"),  # Table 3: C_F = mean
}
# A job spec's ablation (shared.student_names) -> the mode an I-ViT is built in
ABLATION_MODES: dict[AblationName, ModeName] = {
    "none": "full", "no-constraint": "no-constraint", "constraint-on-original": "constraint-on-original",
    "no-gate": "no-gate",
}


@dataclass(frozen=True)
class StudentSize:
    """A ViT geometry a job can name (`model` in the job spec)."""

    image_size: int
    patch_size: int
    hidden: int
    layers: int
    heads: int
    mlp: int


# vit-tiny is the CPU/test size; the others are the paper's S/16, B/16 and L/16
MODEL_SIZES: dict[ModelName, StudentSize] = {
    "vit-tiny": StudentSize(image_size=64, patch_size=8, hidden=96, layers=4, heads=3, mlp=384),
    "vit-s16": StudentSize(image_size=224, patch_size=16, hidden=384, layers=12, heads=6, mlp=1536),
    "vit-b16": StudentSize(image_size=224, patch_size=16, hidden=768, layers=12, heads=12, mlp=3072),
    "vit-l16": StudentSize(image_size=224, patch_size=16, hidden=1024, layers=24, heads=16, mlp=4096),
}


def _check_names(table: dict, names: tuple[str, ...], what: str) -> None:
    """The job spec validates against `names`; a table keyed otherwise would accept a job it cannot build."""
    if set(table) != set(names):
        raise ImportError(f"{what} {sorted(table)} differ from shared.student_names {sorted(names)}")


_check_names(MODEL_SIZES, MODEL_NAMES, "MODEL_SIZES")
_check_names(ABLATION_MODES, ABLATION_NAMES, "ABLATION_MODES")
_check_names({"vit": None, "ivit": None}, STUDENT_KINDS, "student kinds")
if {name: size.layers for name, size in MODEL_SIZES.items()} != MODEL_DEPTHS:
    raise ImportError(f"MODEL_SIZES' depths differ from shared.student_names.MODEL_DEPTHS {MODEL_DEPTHS}")


def interaction_mode(student: StudentKind, ablation: AblationName) -> ModeName:
    """The mode a job's student and ablation build: the plain ViT has no interaction path to ablate."""
    return "off" if student == "vit" else ABLATION_MODES[ablation]


@dataclass(frozen=True)
class InteractionSettings:
    mode: ModeName = "full"
    gate_hidden: int = 64  # width of the gate FFN: ~25k params per layer at S/16 (paper: 22M -> 24M in all)
    align_rows: AlignRows = "cls"  # which C_AGT rows meet C_VLM; see docs/method.md

    @classmethod
    def from_config(cls, config: ViTConfig) -> InteractionSettings:
        raw = getattr(config, "interaction", None) or {}
        return cls(**raw)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "gate_hidden": self.gate_hidden, "align_rows": self.align_rows}


def student_config(size: ModelName, num_labels: int, mode: ModeName, **settings) -> ViTConfig:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model {size!r}; choose one of {sorted(MODEL_SIZES)}")
    geometry = MODEL_SIZES[size]
    config = ViTConfig(image_size=geometry.image_size, patch_size=geometry.patch_size, hidden_size=geometry.hidden,
                       num_hidden_layers=geometry.layers, num_attention_heads=geometry.heads,
                       intermediate_size=geometry.mlp, num_labels=num_labels, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    config.interaction = InteractionSettings(mode=mode, **settings).to_dict()
    return config
