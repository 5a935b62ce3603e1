from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    from services.teacher.tiny.build import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llava"), "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_gqa_dir(tmp_path_factory: pytest.TempPathFactory):
    from services.teacher.tiny.build import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llava-gqa"), "tiny-gqa", seed=1)


@pytest.fixture(scope="session")
def engine(tiny_dir):
    from services.teacher.engine.extraction import InteractionEngine

    return InteractionEngine.from_pretrained(str(tiny_dir))


@pytest.fixture
def redis_server(tmp_path):
    from tests.support.processes import RedisServer

    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def teacher(tmp_path, tiny_dir, redis_server):
    """A factory: teacher(extra_args=[...], teams_overrides={...}) -> a running teacher process."""
    from tests.support.processes import ServiceProcess, write_teams_file

    started = []

    def start(extra_args=(), teams_overrides=None, redis_url=None):
        teams = write_teams_file(tmp_path / f"teams-{len(started)}.yaml", teams_overrides)
        env = {"LFI_TEAMS_FILE": str(teams), "LFI_REDIS_URL": redis_url or redis_server.url,
               "LFI_TEACHER_MODEL": str(tiny_dir), "HF_HUB_OFFLINE": "1"}
        proc = ServiceProcess(["teacher", "serve", *extra_args], env, tmp_path / f"teacher-{len(started)}.log")
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
