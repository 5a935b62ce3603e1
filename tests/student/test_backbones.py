"""The shipped pretrained backbones: the folders are the names a job may give, and each resolves."""

from __future__ import annotations

import pytest

from services.student.backbones import PRETRAINED_DIR, resolve_init, shipped_backbones
from shared.student_names import PRETRAINED_BACKBONES


def test_the_shipped_folders_are_the_names_a_job_spec_accepts():
    assert shipped_backbones() == sorted(PRETRAINED_BACKBONES)
    for name in PRETRAINED_BACKBONES:
        folder = PRETRAINED_DIR / name
        assert {"config.json", "preprocessor_config.json", "README.md"} <= {p.name for p in folder.iterdir()}


def test_builtin_names_resolve_and_others_pass_through(tmp_path):
    assert resolve_init("builtin:vit-tiny-synth") == str(PRETRAINED_DIR / "vit-tiny-synth")
    assert resolve_init("scratch") == "scratch" and resolve_init(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="builtin:vit-tiny-synth"):
        resolve_init("builtin:nope")
