"""The spec's file-system checks: a folder the service may not read is a field-named error, not a 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import InvalidField
from shared.job_spec import JobSpec, check_spec


def _deny(monkeypatch, denied: Path, method: str) -> None:
    # This machine runs tests as root, which no chmod stops; the dashboard in a container runs as a user.
    original = getattr(Path, method)

    def guarded(self: Path, *args, **kwargs):
        if self == denied or denied in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, guarded)


def test_an_unreadable_dataset_names_the_field_and_the_fix(tmp_path, monkeypatch):
    (tmp_path / "synth" / "train").mkdir(parents=True)
    _deny(monkeypatch, tmp_path / "synth", "is_dir")
    with pytest.raises(InvalidField) as caught:
        check_spec(JobSpec(dataset="synth"), tmp_path)
    assert caught.value.field == "dataset"
    assert "cannot be read by this service" in str(caught.value) and "readable" in str(caught.value)


def test_an_unreadable_eval_domain_is_the_dataset_field(tmp_path, monkeypatch):
    (tmp_path / "synth" / "shifted").mkdir(parents=True)
    _deny(monkeypatch, tmp_path / "synth" / "shifted", "is_dir")
    with pytest.raises(InvalidField, match="cannot be read") as caught:
        check_spec(JobSpec(dataset="synth", eval_domains=["shifted"]), tmp_path)
    assert caught.value.field == "dataset"


def test_a_readable_dataset_passes(tmp_path):
    (tmp_path / "synth" / "shifted").mkdir(parents=True)
    assert check_spec(JobSpec(dataset="synth", eval_domains=["shifted"]), tmp_path) == (tmp_path / "synth").resolve()


def test_a_group_labels_jobs_queued_together_and_is_a_plain_label():
    assert JobSpec(dataset="synth").group is None
    assert JobSpec(dataset="synth", group="demo-20261128-104500").group == "demo-20261128-104500"
    for bad in ("", "two words", "../up", "-leading", "x" * 65, "<script>"):
        with pytest.raises(ValidationError, match="group"):
            JobSpec(dataset="synth", group=bad)


def test_a_shipped_backbone_is_a_valid_init_and_is_frozen_by_default(tmp_path):
    (tmp_path / "synth" / "train").mkdir(parents=True)
    spec = JobSpec(dataset="synth", init="builtin:vit-tiny-synth")
    assert spec.freeze is True and check_spec(spec, tmp_path) == (tmp_path / "synth").resolve()
    assert JobSpec(dataset="synth", init="builtin:vit-tiny-synth", freeze=False).freeze is False


def test_an_unknown_builtin_init_names_the_field_and_the_choices():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        JobSpec(dataset="synth", init="builtin:vit-huge")
    error = caught.value.errors()[0]
    assert error["loc"] == ("init",) and "builtin:vit-tiny-synth" in error["msg"] and "scratch" in error["msg"]
    with pytest.raises(ValidationError) as caught:
        JobSpec(dataset="synth", freeze="maybe")
    assert caught.value.errors()[0]["loc"] == ("freeze",)
    with pytest.raises(ValidationError) as caught:
        JobSpec(dataset="synth", task="detection", init="builtin:vit-tiny-synth")
    assert caught.value.errors()[0]["loc"] == ("init",) and "classification" in caught.value.errors()[0]["msg"]
