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


def _published(entry: str | dict) -> tuple[str, str, int]:
    """(host ip, host port, container port) of a ports entry: docker-compose 1.29 prints a host ip in
    the short form `IP:HOST:TARGET/tcp`, compose v2 always the long form."""
    if isinstance(entry, dict):
        return entry.get("host_ip", ""), str(entry.get("published", "")), int(entry["target"])
    parts = entry.split("/")[0].split(":")
    return (parts[0] if len(parts) == 3 else ""), parts[-2], int(parts[-1])


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
    assert _published(services["dashboard"]["ports"][0])[2] == 8300
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


def test_the_images_default_to_docker_hub_and_a_local_base_can_stand_in(monkeypatch):
    services = _config("cpu")["services"]
    assert services["redis"]["image"] == "redis:7-alpine"
    assert "ports" not in services["redis"]  # the host's own Redis may hold 6379
    for name in ("teacher", "worker", "teacher-cpu", "worker-cpu", "dashboard"):
        assert services[name]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim", name
    # one CPU image for the teacher and the worker: one torch install to build and store
    assert services["teacher-cpu"]["image"] == services["worker-cpu"]["image"] == "lfi-cpu:latest"
    assert services["teacher-cpu"]["build"] == services["worker-cpu"]["build"]
    published = {name: _published(services[name]["ports"][0]) for name in ("teacher-cpu", "dashboard")}
    assert published == {"teacher-cpu": ("127.0.0.1", "8100", 8100), "dashboard": ("127.0.0.1", "8300", 8300)}
    monkeypatch.setenv("LFI_BASE_IMAGE", "lfi-base:bookworm")
    monkeypatch.setenv("LFI_REDIS_IMAGE", "lfi-base:bookworm")
    local = _config("cpu")["services"]
    assert local["redis"]["image"] == "lfi-base:bookworm"
    assert local["dashboard"]["build"]["args"]["BASE_IMAGE"] == "lfi-base:bookworm"
    assert "--dir /data" in " ".join(local["redis"]["command"])  # the volume, whatever the image's workdir
