"""How pixels are normalised for the student: the init checkpoint's own image-processor settings.

A pretrained ViT was trained on inputs normalised one way (ImageNet's mean/std for timm's and
Google's ViTs, 0.5/0.5 for others, CLIP's for CLIP towers); feeding it another shifts every
activation of the frozen layers. `preprocessor_config.json` beside the weights says which, so it
is read from there; 0.5/0.5 (transformers' `ViTImageProcessor` default) is used only when the
checkpoint says nothing (from scratch, or a checkpoint without the file). Every student run writes
the file into its checkpoints, so a run used as `init` later is read the same way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lfi.student.preprocessing")
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Normalisation:
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def preprocessor_config(self, image_size: int) -> dict:
        """What `ViTImageProcessor.from_pretrained` reads back (the student's inputs are already resized)."""
        return {"image_processor_type": "ViTImageProcessor", "do_normalize": True, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_resize": True, "size": {"height": image_size, "width": image_size},
                "image_mean": list(self.mean), "image_std": list(self.std)}


DEFAULT = Normalisation()


def _triple(value: object, name: str, source: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, int | float) else value
    if not isinstance(values, list | tuple) or len(values) != 3 \
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{source}: {name} must be 3 numbers (one per RGB channel), got {value!r}")
    return (float(values[0]), float(values[1]), float(values[2]))


def from_preprocessor_config(config: dict, source: str = PREPROCESSOR_FILE) -> Normalisation:
    """The normalisation a `preprocessor_config.json` describes; missing entries keep the 0.5 default."""
    if config.get("do_normalize") is False:  # the checkpoint was trained on plain [0, 1] pixels
        return Normalisation((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean = _triple(config.get("image_mean", DEFAULT.mean), "image_mean", source)
    std = _triple(config.get("image_std", DEFAULT.std), "image_std", source)
    if any(s <= 0 for s in std):
        raise ValueError(f"{source}: image_std must be positive, got {list(std)}")
    return Normalisation(mean, std)


def _config_file(init: str) -> Path | None:
    """The checkpoint's preprocessor config: beside a local folder's weights, or from the hub (cache)."""
    local = Path(init)
    if local.is_dir():
        path = local / PREPROCESSOR_FILE
        return path if path.exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(init, PREPROCESSOR_FILE))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def normalisation_for(init: str) -> Normalisation:
    """Normalisation for a student built from `init` ('scratch', a folder, or a hub id)."""
    if init == "scratch":
        return DEFAULT
    path = _config_file(init)
    if path is None:
        log.warning("%s has no %s; normalising with mean = std = 0.5", init, PREPROCESSOR_FILE)
        return DEFAULT
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable image-processor config ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return from_preprocessor_config(config, str(path))
