"""Real processes for service tests: redis-server and uvicorn-served apps on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing is not up yet
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s} s (last error: {last})")


async def wait_for_async(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    """`wait_for` for a coroutine function, polled without blocking the event loop (requests in flight
    on the same loop keep going while we wait for the state they cause)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            value = await predicate()
            if value:
                return value
        except Exception as exc:  # not there yet
            last = exc
        await asyncio.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s} s (last error: {last})")


class RedisServer:
    """A private redis-server we can kill and restart on the same port. `persistent`: with the flags
    `lfi up` uses (append-only file, fsync always), so a restart keeps what was written."""

    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        from services.launcher import redis_argv

        argv = (redis_argv(self.port, self.workdir) if self.persistent else
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir)])
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _ping(self.port), 10, "redis-server")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def _ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


TEAM_KEYS = {"alpha": "key-alpha", "beta": "key-beta", "admin": "key-admin", "tight": "key-tight"}


def write_teams_file(path: Path, overrides: dict | None = None) -> Path:
    teams = []
    for name, key in TEAM_KEYS.items():
        entry = {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "weight": 1,
                 "rate_per_s": 10_000, "daily_quota": 1_000_000, "admin": name == "admin"}
        entry.update((overrides or {}).get(name, {}))
        teams.append(entry)
    path.write_text(yaml.safe_dump({"teams": teams}))
    return path


def stop_group(proc: subprocess.Popen | None, sig: int, grace_s: float) -> None:
    """Send `sig` to the process group, then SIGKILL it if it has not exited within `grace_s`."""
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class ServiceProcess:
    """`python -m services.cli <args> --port P` as a subprocess, stopped with SIGINT then SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, health: str = "/readyz") -> None:
        self.port = free_port()
        self.args = args
        self.env = env
        self.log_path = log_path
        self.health = health
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *self.args, "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            return httpx.get(self.url + self.health, timeout=2).status_code == 200

        try:
            wait_for(up, timeout_s, " ".join(self.args))
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGINT, grace_s=15)
        self.proc = None


class CeleryWorker:
    """`lfi worker` as a subprocess (its own process group, so kill -9 takes the whole worker)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> CeleryWorker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "--hostname", f"{self.name}@test"],
            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            return f"{self.name}@test ready" in self.log_path.read_text(errors="replace")

        wait_for(ready, timeout_s, f"celery worker {self.name}", interval_s=0.2)
        return self

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        """Until the worker has written `text` to its log: a marker of what it did, instead of a sleep."""
        wait_for(lambda: text in self.log_path.read_text(errors="replace"), timeout_s, f"{text!r} in {self.log_path}")

    def kill9(self) -> None:
        stop_group(self.proc, signal.SIGKILL, grace_s=10)
        self.proc = None

    def stop(self) -> None:
        stop_group(self.proc, signal.SIGTERM, grace_s=20)
        self.proc = None
