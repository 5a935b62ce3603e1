"""The teacher's tests' shared checkpoints beyond the project-wide ones in tests/conftest.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def real_vocab_dir(tmp_path_factory: pytest.TempPathFactory):
    """llava-1.5-7b-hf's real tokenizer, processor and chat template on tiny random weights (built once)."""
    from services.teacher.tiny.build import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("llava-1.5-7b-vocab"), "llava-1.5-7b-vocab", seed=0)


@pytest.fixture(scope="session")
def real_vocab_engine(real_vocab_dir):
    from services.teacher.engine.extraction import InteractionEngine

    return InteractionEngine.from_pretrained(str(real_vocab_dir), max_batch_size=8)
