"""`lfi up`'s Redis: its own, append-only under the runs folder, unless LFI_REDIS_URL names one; what it
acknowledged survives a kill -9 (a real redis-server, killed and started again on the same folder)."""

from __future__ import annotations

import shutil
import signal

import pytest
import redis

from services.launcher import Stack, _start_redis, choose_redis
from shared.settings import Settings
from tests.support.processes import free_port, stop_group


def test_without_lfi_redis_url_up_starts_its_own(monkeypatch):
    monkeypatch.delenv("LFI_REDIS_URL", raising=False)
    settings, own = choose_redis(Settings())
    assert own and settings.redis_url.startswith("redis://127.0.0.1:") and ":6379/" not in settings.redis_url
    monkeypatch.setenv("LFI_REDIS_URL", "redis://127.0.0.1:6379/0")
    settings, own = choose_redis(Settings())
    assert not own and settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.slow
def test_its_redis_keeps_what_it_acknowledged_across_a_kill_9(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    url = f"redis://127.0.0.1:{free_port()}/0"
    stack = Stack(tmp_path / "runs", {})
    try:
        _start_redis(stack, url, tmp_path / "runs")
        client = redis.Redis.from_url(url, decode_responses=True)
        assert client.config_get("appendfsync")["appendfsync"] == "always"
        client.hset("lfi:job:abc", mapping={"status": "queued"})
        stop_group(stack.services[0].proc, signal.SIGKILL, grace_s=10)  # no shutdown save: only the AOF
        _start_redis(stack, url, tmp_path / "runs")
        assert redis.Redis.from_url(url, decode_responses=True).hgetall("lfi:job:abc") == {"status": "queued"}
        assert list((tmp_path / "runs" / "redis").glob("appendonly*"))
    finally:
        stack.stop(grace_s=5)
