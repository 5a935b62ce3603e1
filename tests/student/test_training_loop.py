"""services/student/training_loop.py: the loop's task hooks are abstract, and both trainers supply them all."""

from __future__ import annotations

import pytest

from services.student.detection.trainer import DetectionConfig, DetectionTrainer
from services.student.trainer import TrainConfig, Trainer
from services.student.training_loop import SpecConfig, TrainingLoop


def test_a_task_must_give_every_hook_before_the_loop_can_run():
    assert TrainingLoop.__abstractmethods__ == {"train_step", "_empty", "_gate_layers", "_epoch_scores", "_pictures"}
    assert SpecConfig.__abstractmethods__ == {"mode"}

    class Partial(TrainingLoop):
        def train_step(self, batch):
            return {}

    with pytest.raises(TypeError, match="_epoch_scores"):
        Partial(None, ".", None, None)


@pytest.mark.parametrize("cls", [Trainer, DetectionTrainer, TrainConfig, DetectionConfig])
def test_both_tasks_fill_every_hook(cls):
    assert not cls.__abstractmethods__
