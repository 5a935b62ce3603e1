"""`lfi teacher serve` reads one TeacherSettings: options override the environment, the rest keep it."""

from __future__ import annotations

import pytest
import uvicorn
from typer.testing import CliRunner

from services.teacher.cli import teacher_app
from services.teacher.settings import TeacherSettings
from shared.settings import get_settings
from tests.support.processes import write_teams_file


@pytest.fixture
def served(tiny_dir, tmp_path, monkeypatch):
    """Runs `serve` with the given arguments up to uvicorn.run, and returns what it would have served."""
    captured: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: captured.update(app=app, **kwargs))
    monkeypatch.setenv("LFI_TEAMS_FILE", str(write_teams_file(tmp_path / "teams.yaml")))
    monkeypatch.setenv("LFI_TEACHER_MODEL", str(tiny_dir))
    get_settings.cache_clear()

    def serve(*args: str) -> dict:
        result = CliRunner().invoke(teacher_app, ["serve", *args])
        assert result.exit_code == 0, result.output
        return captured

    yield serve
    get_settings.cache_clear()


def test_options_win_over_the_environment_and_unset_options_keep_it(served, monkeypatch):
    monkeypatch.setenv("LFI_TEACHER_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("LFI_TEACHER_MAX_WAIT_MS", "3")
    monkeypatch.setenv("LFI_TEACHER_PORT", "9123")
    run = served("--max-batch-size", "4", "--max-body-mb", "2")
    settings = run["app"].state.teacher.config.settings
    assert settings.max_batch_size == 4 and settings.max_body_bytes == 2 * 1024 * 1024  # the options
    assert settings.max_wait_ms == 3 and run["port"] == 9123  # the environment
    defaults = TeacherSettings.defaults()
    assert settings.max_queue_per_team == defaults.max_queue_per_team and run["host"] == defaults.host


def test_an_invalid_setting_is_a_clear_error(served):
    result = CliRunner().invoke(teacher_app, ["serve", "--max-batch-size", "0"])
    assert result.exit_code == 2 and "max_batch_size" in result.output


def test_device_and_dtype_default_to_auto_and_the_system_prompt_is_an_option(served):
    defaults = TeacherSettings.defaults()
    assert (defaults.device, defaults.dtype) == ("auto", "auto")
    config = served()["app"].state.teacher.config
    assert config.extraction.system_prompt == "llava"  # the tiny checkpoint recommends nothing: LLaVA-1.5's own
    config = served("--system-prompt", "none")["app"].state.teacher.config
    assert config.extraction.system_prompt == "none"
    bad = CliRunner().invoke(teacher_app, ["serve", "--system-prompt", "vicuna"])
    assert bad.exit_code == 2 and "system_prompt must be one of llava, none" in " ".join(bad.output.split())


def test_the_grace_period_at_shutdown_is_a_setting_handed_to_uvicorn(served, monkeypatch):
    assert served()["timeout_graceful_shutdown"] == TeacherSettings.defaults().graceful_shutdown_s == 5
    monkeypatch.setenv("LFI_TEACHER_GRACEFUL_SHUTDOWN_S", "2")
    assert served()["timeout_graceful_shutdown"] == 2
    assert served("--graceful-shutdown-s", "0.5")["timeout_graceful_shutdown"] == 0.5
