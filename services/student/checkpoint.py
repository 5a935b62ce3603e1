"""Checkpoints a run can resume from exactly: weights, optimizer, scheduler and data position.

Layout under the run folder: `checkpoints/step-<n>/` holding `model.safetensors` (every weight),
`trainer_state.pt` (optimizer and scheduler state, position, metric history), `config.json`
(the model config) and `preprocessor_config.json` (the input normalisation), plus a
`checkpoints/latest` file naming the newest complete one. The pointer is replaced atomically after
the folder is fully written, so a crash mid-write leaves the previous checkpoint in charge.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LATEST = "latest"


def save_checkpoint(run_dir: Path, global_step: int, model: torch.nn.Module, state: dict[str, Any],
                    keep: int = 2, extra_files: dict[str, str] | None = None) -> Path:
    root = Path(run_dir) / "checkpoints"
    folder = root / f"step-{global_step:08d}"
    tmp = root / f".tmp-step-{global_step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / "config.json").write_text(model.config.to_json_string())
    for name, text in (extra_files or {}).items():  # e.g. preprocessor_config.json: how inputs were normalised
        (tmp / name).write_text(text)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    pointer = root / ".latest.tmp"
    pointer.write_text(folder.name)
    os.replace(pointer, root / LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, or, if a crash left it pointing nowhere, the newest complete one."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if pointer.exists():
        folder = root / pointer.read_text().strip()
        if (folder / "trainer_state.pt").exists() and (folder / "model.safetensors").exists():
            return folder
    complete = [p for p in sorted(root.glob("step-*")) if (p / "trainer_state.pt").exists()
                and (p / "model.safetensors").exists()]
    return complete[-1] if complete else None


def load_checkpoint(folder: Path, model: torch.nn.Module) -> dict[str, Any]:
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return torch.load(folder / "trainer_state.pt", weights_only=True)

