"""The job spec: what `POST /jobs` and `lfi train SPEC` accept, and the checks a spec passes before it is queued.

The one home of a job's training settings (docs/api.md lists them; docs/method.md sets them beside the
paper's recipe). No torch here: the dashboard validates specs too.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from shared.coco import CocoFormatError, check_coco_layout
from shared.errors import InvalidField
from shared.student_names import (
    BUILTIN_PREFIX,
    DETECTION_STUDENT_KINDS,
    DETECTOR_NAMES,
    INIT_CHOICES,
    MODEL_DEPTHS,
    PRETRAINED_BACKBONES,
    AblationName,
    AlignHeadsName,
    AlignRowsName,
    DetectionStudentKind,
    DetectorName,
    KLDirectionName,
    ModelName,
    StudentKind,
    TaskName,
)


class JobSpec(BaseModel):
    """What `POST /jobs` and `lfi train SPEC` accept. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=500, description="Folder below LFI_DATA_ROOT.")
    task: TaskName = Field("classification", description="detection: a COCO-format dataset, student detr | idetr.")
    model: Literal[ModelName, DetectorName] = "vit-tiny"  # one flat Literal: an error names `model`, not a union arm
    student: Literal[StudentKind, DetectionStudentKind] = "ivit"
    ablation: AblationName = "none"
    init: str = Field("scratch", max_length=500, description="'scratch', a shipped backbone (builtin:vit-tiny-synth), "
                                                            "or a pretrained ViT hub id or folder.")
    freeze: bool = Field(True, description="With a pretrained init: train only the interaction queries, gates and "
                                           "head (paper §5). false: fine-tune every weight. Ignored from scratch.")
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(5e-4, gt=0, le=1.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    prompt: str | None = Field(None, max_length=64, description="Teacher prompt template id (default per task).")
    align_layers: list[int] | None = Field(None, max_length=64, description="Student layers aligned (default all).")
    align_weight: float = Field(1.0, ge=0, le=1000)
    # The recipe (docs/method.md: "The training recipe"): the trainer's defaults, the paper's where it gives one.
    weight_decay: float = Field(0.05, ge=0, le=10, description="AdamW weight decay.")
    warmup_steps: int | None = Field(None, ge=0, le=10_000_000,
                                     description="Linear warmup steps before the cosine decay (default: 5% of all).")
    align_rows: AlignRowsName = Field("cls", description="Which C_AGT rows meet C_VLM: the CLS row, the mean of the "
                                                         "patch rows, or each patch row (heads averaged per row).")
    align_heads: AlignHeadsName = Field("mean", description="Align the heads' mean attention, or every head.")
    kl_direction: KLDirectionName = Field("target-first", description="target-first: KL(C_VLM || C_AGT); "
                                          "model-first (the paper's): KL(C_AGT || C_VLM), needs kl_smoothing > 0.")
    kl_smoothing: float = Field(0.0, ge=0, lt=1, validate_default=True,
                                description="C_VLM mixed with uniform by this weight (model-first needs > 0).")
    min_crop_mass: float = Field(0.25, ge=0, le=1, description="A random crop keeping less of a map's mass than "
                                 "this adds no alignment term for that image.")
    eval_domains: list[str] = Field(default_factory=list, max_length=32)
    checkpoint_every: int = Field(50, ge=1, le=1_000_000)
    map_store: str | None = Field(None, max_length=500,
                                  description="A map store from `lfi maps --export` (under the data root): "
                                              "train from it instead of asking the teacher.")
    team: str = Field("default", pattern=r"^[a-z0-9-]+$", max_length=64)
    group: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$", max_length=64,
                              description="A label shared by jobs queued together (`lfi up --demo` sets one): "
                                          "the jobs page compares the latest group by default.")

    @model_validator(mode="before")
    @classmethod
    def _detection_defaults(cls, data: Any) -> Any:
        """A detection job that names no model or student gets the tiny Conditional DETR with interaction."""
        if isinstance(data, dict) and data.get("task") == "detection":
            data = {"model": "cdetr-tiny", "student": "idetr", **data}
        return data

    @field_validator("model", "student")
    @classmethod
    def _fits_the_task(cls, value: str, info: ValidationInfo) -> str:
        detection = info.data.get("task") == "detection"
        names = DETECTOR_NAMES if info.field_name == "model" else DETECTION_STUDENT_KINDS
        if detection and value not in names:
            raise ValueError(f"task detection takes {info.field_name} {' | '.join(names)}, got {value!r}")
        if not detection and value in names:
            raise ValueError(f"{info.field_name} {value!r} is for detection: set task: detection")
        return value

    @field_validator("init")
    @classmethod
    def _known_builtin(cls, init: str, info: ValidationInfo) -> str:
        if not init.startswith(BUILTIN_PREFIX):
            return init
        if init[len(BUILTIN_PREFIX):] not in PRETRAINED_BACKBONES:
            raise ValueError(f"unknown built-in backbone {init!r}; choose one of {' | '.join(INIT_CHOICES)}, "
                             "or a pretrained ViT hub id or folder")
        if info.data.get("task") == "detection":
            raise ValueError(f"{init} is a ViT for classification; a detection job takes scratch or a DETR "
                             "checkpoint")
        return init

    @field_validator("eval_domains")
    @classmethod
    def _plain_folder_names(cls, domains: list[str]) -> list[str]:
        for domain in domains:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", domain) or domain in {".", ".."}:
                raise ValueError(f"eval domain {domain!r} must be a plain folder name")
        return domains

    @field_validator("align_layers")
    @classmethod
    def _non_negative(cls, layers: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if layers is not None and not layers:
            raise ValueError("align_layers is empty: omit it to align every layer")
        if layers is not None and any(i < 0 for i in layers):
            raise ValueError("align_layers are layer indices, 0 or more")
        model, init = info.data.get("model"), info.data.get("init")
        # a pretrained init brings its own depth, known only once loaded (the trainer checks it then)
        if layers is not None and model in MODEL_DEPTHS and init == "scratch" and max(layers) >= MODEL_DEPTHS[model]:
            raise ValueError(f"align_layers {layers} out of range: {model} has layers 0..{MODEL_DEPTHS[model] - 1}")
        return layers

    @field_validator("kl_smoothing")
    @classmethod
    def _smoothing_for_model_first(cls, smoothing: float, info: ValidationInfo) -> float:
        if info.data.get("kl_direction") == "model-first" and smoothing <= 0:
            raise ValueError("kl_direction 'model-first' needs kl_smoothing > 0: C_VLM has exact zeros, "
                             "so KL(C_AGT || C_VLM) is infinite without it (e.g. 0.1)")
        return smoothing


def resolve_dataset(dataset: str, data_root: Path, field: str = "dataset") -> Path:
    """The folder `dataset` names, guaranteed to lie below the data root (no `..`, no absolute escape, no
    symlink out). Also checks the other spec fields that name folders (`map_store`, a local `init`):
    `field` is the one being checked, so the error names it and a form marks the right input."""
    root = Path(data_root).resolve()
    if "\x00" in dataset:  # a JSON string may carry one; the OS refuses it with a ValueError, not a "no"
        raise InvalidField(field, f"{field} {dataset!r} contains a NUL character")
    candidate = Path(dataset)
    if candidate.is_absolute():
        raise InvalidField(field, f"{field} must be a path relative to the data root ({root}), got {dataset!r}")
    with _readable(field, dataset):
        path = (root / candidate).resolve()
        if path != root and root not in path.parents:
            raise InvalidField(field, f"{field} {dataset!r} is outside the data root {root}")
        if not path.is_dir():
            raise InvalidField(field, f"{field} {dataset!r} is not a folder under the data root {root}")
    return path


@contextlib.contextmanager
def _readable(field: str, name: str) -> Iterator[None]:
    """A folder this process may not read (e.g. a host folder mounted into a container whose user
    can't open it) is the spec's problem to report, not a 500."""
    try:
        yield
    except PermissionError as exc:
        raise InvalidField(field, f"{field} {name!r} cannot be read by this service ({exc.strerror}: "
                                  f"{exc.filename}): make the data folder readable by its user "
                                  f"(uid {os.getuid()})") from None


def check_spec(spec: JobSpec, data_root: Path) -> Path:
    """Checks that need the file system, done when the job is queued so a bad spec never reaches a worker.
    Each failure is an `InvalidField` naming the spec field at fault."""
    path = resolve_dataset(spec.dataset, data_root)
    with _readable("dataset", spec.dataset):
        _check_dataset_contents(spec, path, data_root)
    return path


def _check_dataset_contents(spec: JobSpec, path: Path, data_root: Path) -> None:
    if spec.task == "detection":  # a COCO-format set: its splits are annotation files, not folders
        _check_coco(path, spec.eval_domains)
    for domain in spec.eval_domains if spec.task == "classification" else ():
        if not (path / domain).is_dir():
            raise InvalidField("eval_domains", f"eval domain {domain!r} is not a folder in {spec.dataset}")
    if spec.map_store is not None:
        map_store = resolve_dataset(spec.map_store, data_root, "map_store")
        if not (map_store / "index.json").exists():
            raise InvalidField("map_store", f"map_store {spec.map_store!r} has no index.json: "
                                            "export one with lfi maps --export")
    if spec.init != "scratch" and (spec.init.startswith("/") or ".." in Path(spec.init).parts):
        init = resolve_dataset(spec.init, data_root, "init")  # a local pretrained folder must be under the root too
        if not (init / "config.json").exists():
            raise InvalidField("init", f"init {spec.init!r} has no config.json: not a saved ViT")


def _check_coco(path: Path, eval_domains: list[str]) -> None:
    try:
        check_coco_layout(path, eval_domains)
    except CocoFormatError as exc:
        raise InvalidField("eval_domains" if "eval domain" in str(exc) else "dataset", str(exc)) from None
