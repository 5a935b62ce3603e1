"""The compose file: valid for docker-compose, and every command it runs is one this project has."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _config(profiles: str) -> dict:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                            env={**os.environ, "REDIS_PASSWORD": "test", "COMPOSE_PROFILES": profiles}, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_accepts_the_file_and_the_production_shape_is_there():
    services = _config("gpu")["services"]
    assert {"redis", "teacher", "worker", "dashboard", "teacher-cpu", "worker-cpu"} <= set(services)
    for name in ("teacher", "worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    for name, service in services.items():
        assert "healthcheck" in service, name
        if name != "redis":
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--requirepass test" in redis and "volatile-lru" in redis
    assert services["dashboard"]["ports"][0]["target"] == 8300
    assert "teacher" in services["teacher-cpu"]["networks"]["default"]["aliases"]


def test_a_missing_redis_password_is_refused(tmp_path):
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "--env-file", str(empty), "config"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode != 0 and "REDIS_PASSWORD" in result.stderr


def test_every_lfi_command_in_the_compose_file_exists_with_those_options():
    raw = yaml.safe_load(COMPOSE.read_text())
    commands = []
    for section in (raw["services"], {k: v for k, v in raw.items() if k.startswith("x-")}):
        for service in section.values():
            command = service.get("command") if isinstance(service, dict) else None
            if command and command[0] == "lfi":
                commands.append(command[1:])
    assert {c[0] for c in commands} == {"teacher", "worker", "dashboard"}
    for command in commands:
        # click rejects an unknown option before it reaches the trailing --help
        result = subprocess.run([sys.executable, "-m", "services.cli", *command, "--help"], capture_output=True,
                                text=True, cwd=ROOT, timeout=60)
        assert result.returncode == 0, (command, result.stderr)
