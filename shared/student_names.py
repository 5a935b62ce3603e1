"""The names a job spec may give the student: model geometries, student kinds, ablations.

One list for both sides: `shared.job_spec.JobSpec` validates against these types, and the student
(services/student/model.py) keys its tables by the same names and refuses to import if they
differ. No torch here.
"""

from __future__ import annotations

from typing import Literal, get_args

ModelName = Literal["vit-tiny", "vit-s16", "vit-b16", "vit-l16"]
StudentKind = Literal["vit", "ivit"]  # the plain ViT baseline, or the I-ViT
AblationName = Literal["none", "no-constraint", "constraint-on-original", "no-gate"]  # paper Table 3
AlignRowsName = Literal["cls", "mean", "each"]  # which C_AGT rows meet C_VLM (docs/method.md)
AlignHeadsName = Literal["mean", "each"]
KLDirectionName = Literal["target-first", "model-first"]
# Encoder layers per geometry, so a spec's align_layers is checked when it is queued; the student's
# MODEL_SIZES must agree (services/student/model_config.py refuses to import otherwise).
MODEL_DEPTHS: dict[ModelName, int] = {"vit-tiny": 4, "vit-s16": 12, "vit-b16": 12, "vit-l16": 24}
# Pretrained backbones shipped with the student (services/student/pretrained/<name>/), named in a job
# spec as `init: builtin:<name>`; the student's resolver refuses to import if its folders differ.
BUILTIN_PREFIX = "builtin:"
PRETRAINED_BACKBONES: tuple[str, ...] = ("vit-tiny-synth",)
INIT_CHOICES: tuple[str, ...] = ("scratch", *(BUILTIN_PREFIX + name for name in PRETRAINED_BACKBONES))

MODEL_NAMES: tuple[ModelName, ...] = get_args(ModelName)
STUDENT_KINDS: tuple[StudentKind, ...] = get_args(StudentKind)
ABLATION_NAMES: tuple[AblationName, ...] = get_args(AblationName)

# Detection (the DETR students): `task: detection` in a job spec takes these for `student` and `model`
TaskName = Literal["classification", "detection"]
DetectionStudentKind = Literal["detr", "idetr"]  # Conditional DETR / DETR, or with interaction queries (I-DETR)
DetectorName = Literal["cdetr-tiny", "detr-tiny", "cdetr-r50", "detr-r50"]
DETECTION_STUDENT_KINDS: tuple[DetectionStudentKind, ...] = get_args(DetectionStudentKind)
DETECTOR_NAMES: tuple[DetectorName, ...] = get_args(DetectorName)
