"""The training loop every student trainer runs: steps, events, checkpoints and exact resume, written once.

A task's trainer (classification: trainer.py; detection: detection/trainer.py) subclasses `TrainingLoop`:
its `__init__` builds the model and the training batches, then calls `_start_schedule`; it gives its
`train_step`, what an epoch record holds beyond the shared fields (`_epoch_scores`, `_epoch_counts`, plus
`_accumulate` for its own sums), its sample pictures (`_pictures`) and any extra checkpoint files. The
loop owns the rest, so both trainers send the same events (`step`, `epoch`, `checkpoint`, `resumed`,
`samples`) and write the same checkpoint format, and the job layer runs either unchanged.

AdamW, linear warmup then cosine decay, gradient clipping. `progress(event)` hears every step and epoch;
`should_stop()` is checked before every step (cooperative cancel, lost lease). A checkpoint is written
every `checkpoint_every` steps and at each epoch end; `run()` resumes from the newest one in the run folder.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Self

import numpy as np
import torch

from services.student.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from services.student.loader import Prefetcher
from services.student.model_config import MODES, ModeName
from shared.job_spec import JobSpec

Event = dict[str, Any]


class SpecConfig(ABC):
    """What every training config shares: a frozen dataclass of a job spec (`spec`) plus the trainer's own
    settings (`grad_clip`, `step_checkpoints`, `max_steps`, `device`, ...), which a job cannot set."""

    spec: JobSpec
    grad_clip: float
    step_checkpoints: bool  # False: checkpoints at epoch ends only (short test and benchmark runs)
    max_steps: int | None  # stop early (tests, benchmarks)
    device: str

    @classmethod
    def from_spec(cls, spec: JobSpec, **overrides: Any) -> Self:
        """The one way from a job spec to a training config. An override may name a spec field (validated as
        the spec is: a benchmark variant such as `ablation="no-gate"`) or one of the trainer's own."""
        spec_fields = {name: value for name, value in overrides.items() if name in JobSpec.model_fields}
        if spec_fields:
            spec = JobSpec.model_validate({**spec.model_dump(), **spec_fields})
        own = {name: value for name, value in overrides.items() if name not in spec_fields}
        return cls(spec=spec, **own)

    @property
    @abstractmethod
    def mode(self) -> ModeName:
        """The interaction mode the student is built in (the task's config knows its students)."""

    @property
    def aligned(self) -> bool:
        return MODES[self.mode].aligned

    def as_dict(self) -> dict[str, Any]:
        """Plain values only: it is saved in checkpoints, which are loaded with `weights_only=True`."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spec"}
        return {**self.spec.model_dump(mode="json"), **own}


@dataclass
class TrainResult:
    status: Literal["completed", "stopped"]
    global_step: int
    history: list[dict] = field(default_factory=list)  # one entry per finished epoch
    final: dict = field(default_factory=dict)


class Batches(Protocol):
    """A task's batch builder: batch `step` of `epoch` is a pure function of the two (resume is exact)."""

    unreadable: set[str]

    def __len__(self) -> int: ...

    def build(self, epoch: int, step: int) -> Any: ...


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class TrainingLoop(ABC):
    """The shared loop; a subclass supplies the task (see the module docstring for which methods)."""

    log: ClassVar[logging.Logger] = logging.getLogger("lfi.student.trainer")
    config: SpecConfig
    model: torch.nn.Module
    train_batches: Batches

    def __init__(self, config: SpecConfig, run_dir: Path, progress: Callable[[Event], None] | None,
                 should_stop: Callable[[], bool] | None) -> None:
        """The run's settings, its device, and every random generator seeded (before the model is built)."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.device = pick_device(config.device)
        torch.manual_seed(config.spec.seed)
        random.seed(config.spec.seed)
        np.random.seed(config.spec.seed)

    def _start_schedule(self, *, lr: float, weight_decay: float, warmup_steps: int | None) -> None:
        """AdamW over the trainable parameters, warmup (default: 5 % of the run) then cosine; step 0."""
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = self.config.spec.epochs * self.steps_per_epoch
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
        warmup = warmup_steps if warmup_steps is not None else max(1, self.total_steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, self.total_steps))
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.history: list[dict] = []
        self._epoch_sums: dict[str, float] = {}

    # -- the task's parts ----------------------------------------------------------------------------
    @abstractmethod
    def train_step(self, batch: Any) -> dict[str, Any]:
        """One optimisation step (via `_optimise`): task_loss, align_loss, seen, gates, and the task's own."""

    @abstractmethod
    def _empty(self, batch: Any) -> bool:
        """Every image of the batch was unreadable: the step is skipped."""

    @abstractmethod
    def _gate_layers(self) -> int:
        """How many layers report gates (the epoch record's mean gate per layer)."""

    @abstractmethod
    def _epoch_scores(self, losses: dict[str, float], seen: float) -> dict[str, Any]:
        """The record's fields between `epoch` and `gates`: the mean losses and the task's evaluation."""

    def _epoch_counts(self) -> dict[str, Any]:
        """Task-specific counts, placed just before `global_step` in the epoch record."""
        return {}

    @abstractmethod
    def _pictures(self) -> dict[str, Any]:
        """A few fixed images drawn with what the model does on them, saved as JSON at each epoch end."""

    def _checkpoint_files(self) -> dict[str, str]:
        """Files written into each checkpoint folder besides the weights, state and model config."""
        return {}

    # -- state ---------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "history": self.history, "epoch_sums": self._epoch_sums, "config": self.config.as_dict()}

    def checkpoint(self) -> Path:
        folder = save_checkpoint(self.run_dir, self.global_step, self.model, self._state(),
                                 extra_files=self._checkpoint_files())
        self.progress({"type": "checkpoint", "global_step": self.global_step, "epoch": self.epoch,
                       "step_in_epoch": self.step_in_epoch, "path": str(folder)})
        return folder

    def resume(self) -> bool:
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            return False
        state = load_checkpoint(folder, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = state["global_step"]
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.history = state["history"]
        self._epoch_sums = state["epoch_sums"]
        self.progress({"type": "resumed", "global_step": self.global_step, "epoch": self.epoch,
                       "step_in_epoch": self.step_in_epoch, "path": str(folder)})
        self.log.info("resumed from %s (epoch %d, step %d)", folder, self.epoch, self.step_in_epoch)
        return True

    # -- one step ------------------------------------------------------------------------------------
    def _optimise(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.resume()
        while self.epoch < self.config.spec.epochs:
            if not self._train_epoch():
                return TrainResult("stopped", self.global_step, self.history)
            self._end_epoch()
        final = dict(self.history[-1]) if self.history else {}
        return TrainResult("completed", self.global_step, self.history, final)

    def _train_epoch(self) -> bool:
        """The rest of the current epoch; False when told to stop (cancel, lost lease) or at `max_steps`."""
        max_steps = self.config.max_steps
        prefetch = Prefetcher(self.train_batches, self.epoch, self.step_in_epoch)
        try:
            last = time.perf_counter()
            for batch, waited in prefetch:
                if self.should_stop() or (max_steps is not None and self.global_step >= max_steps):
                    return False
                if self._empty(batch):
                    self.step_in_epoch += 1
                    continue
                step = self.train_step(batch)
                now = time.perf_counter()
                seconds, last = now - last, now
                self._after_step(step, batch, waited, seconds)
        finally:
            prefetch.close()
        return True

    def _accumulate(self, step: dict[str, Any], batch: Any, waited: float, seconds: float) -> None:
        """Adds the step to the epoch's sums (the losses weighted by images seen, gate means per layer)."""
        sums = self._epoch_sums
        for name in ("task_loss", "align_loss"):
            sums[name] = sums.get(name, 0.0) + step[name] * step["seen"]
        for name, value in (("seen", step["seen"]), ("wait_s", waited), ("time_s", seconds), ("steps", 1)):
            sums[name] = sums.get(name, 0.0) + value
        for i, gate in enumerate(step["gates"]):
            if gate is not None:
                sums[f"gate{i}_agt"] = sums.get(f"gate{i}_agt", 0.0) + gate[0]
                sums[f"gate{i}_vfm"] = sums.get(f"gate{i}_vfm", 0.0) + gate[1]

    def _after_step(self, step: dict[str, Any], batch: Any, waited: float, seconds: float) -> None:
        self.global_step += 1
        self.step_in_epoch += 1
        self._accumulate(step, batch, waited, seconds)
        self.progress({"type": "step", "epoch": self.epoch + 1, "step": self.step_in_epoch,
                       "steps_per_epoch": self.steps_per_epoch, "global_step": self.global_step,
                       "total_steps": self.total_steps, "task_loss": step["task_loss"],
                       "align_loss": step["align_loss"], "lr": self.scheduler.get_last_lr()[0],
                       "images_per_s": step["seen"] / max(seconds, 1e-9), "map_wait_s": waited,
                       "skipped": batch.skipped})
        # the epoch end writes its own checkpoint just after the last step
        if self.config.step_checkpoints and self.global_step % self.config.spec.checkpoint_every == 0 \
                and self.step_in_epoch < self.steps_per_epoch:
            self.checkpoint()

    def _finish_epoch(self) -> dict[str, Any]:
        sums = self._epoch_sums
        seen, steps = max(1.0, sums.get("seen", 0.0)), max(1.0, sums.get("steps", 0.0))
        gates = [[sums[f"gate{i}_agt"] / steps, sums[f"gate{i}_vfm"] / steps] if f"gate{i}_agt" in sums else None
                 for i in range(self._gate_layers())]
        losses = {name: sums.get(name, 0.0) / seen for name in ("task_loss", "align_loss")}
        return {"epoch": self.epoch + 1, **self._epoch_scores(losses, seen), "gates": gates,
                "images_per_s": sums.get("seen", 0.0) / max(1e-9, sums.get("time_s", 0.0)),
                "map_wait_s": sums.get("wait_s", 0.0), "unreadable": len(self.train_batches.unreadable),
                **self._epoch_counts(), "global_step": self.global_step}

    def _end_epoch(self) -> None:
        record = self._finish_epoch()
        self.history.append(record)
        self.epoch += 1
        self.step_in_epoch = 0
        self._epoch_sums = {}
        # the epoch is in the checkpoint before it is announced: a resume never counts it twice
        self.checkpoint()
        self.progress({"type": "epoch", **record})
        samples = self._write_samples()
        if samples is not None:
            self.progress({"type": "samples", "epoch": self.epoch, "path": str(samples)})

    def _write_samples(self) -> Path | None:
        try:
            pictures = self._pictures()
            folder = self.run_dir / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"epoch-{self.epoch:04d}.json"
            path.write_text(json.dumps(pictures))
        except Exception:  # pictures are a nicety: never let them fail a run
            self.log.exception("could not draw the epoch's sample pictures")
            return None
        return path
