"""The processes bench/chaos.py kills: Redis (append-only, fsync always), the teacher, two workers and the
dashboard, each restartable on the same port; and the bookkeeping of each kill's recovery."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from services.launcher import redis_argv
from shared.jobs import JobStatus, JobStore
from shared.synth import generate
from tests.support.processes import (
    TEAM_KEYS,
    CeleryWorker,
    ServiceProcess,
    free_port,
    stop_group,
    wait_for,
    write_teams_file,
)

COMPONENTS = ("worker", "teacher", "dashboard", "redis")
WORKERS = 2
STEPPING_S = 10.0


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass
class Kill:
    component: str  # "worker-0", "teacher", ...
    killed_at: float  # wall clock (events carry wall-clock times)
    running: list[str]  # jobs taking steps at the kill
    restarted_at: float | None = None
    recovery_s: float | None = None
    detail: dict = field(default_factory=dict)


class PersistentRedis:
    """A redis-server with `lfi up`'s flags (append-only, fsync always) on a fixed port and folder."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(redis_argv(self.port, self.folder), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        # answers PING, and has finished loading its append-only file
        wait_for(lambda: JobStore.from_url(self.url).redis.dbsize() >= 0, 30, "redis-server")

    def kill9(self) -> None:
        stop_group(self.proc, signal.SIGKILL, grace_s=10)
        self.proc = None


class ChaosStack:
    def __init__(self, tmp: Path, lease_s: float, seed: int = 0) -> None:
        self.tmp, self.lease_s = tmp, lease_s
        self.rng = random.Random(seed)  # which worker dies, when a worker dies
        self.redis = PersistentRedis(tmp / "redis")
        self.kills: list[Kill] = []
        self.incarnations = 0
        self.teacher: ServiceProcess | None = None
        self.dashboard: ServiceProcess | None = None
        self.workers: list[CeleryWorker | None] = [None] * WORKERS
        self.env: dict[str, str] = {}
        self._store: JobStore | None = None

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = JobStore.from_url(self.redis.url, patient=True)
        return self._store

    def start(self) -> None:
        from services.teacher.tiny.build import build_tiny_checkpoint

        # 16 images, 2 steps of 8 an epoch: a job's cost is mostly its process starting, not its steps
        generate(self.tmp / "data" / "small", n_train_per_class=4, n_val_per_class=1, n_shifted_per_class=0, seed=0)
        tiny = build_tiny_checkpoint(self.tmp / "tiny", "tiny", seed=0)
        teams = write_teams_file(self.tmp / "teams.yaml")
        self.redis.start()
        self.env = {"LFI_REDIS_URL": self.redis.url, "LFI_TEAMS_FILE": str(teams), "LFI_TEACHER_MODEL": str(tiny),
                    "LFI_DATA_ROOT": str(self.tmp / "data"), "LFI_RUNS_ROOT": str(self.tmp / "runs"),
                    "LFI_TEACHER_KEY": TEAM_KEYS["alpha"], "LFI_JOB_LEASE_S": str(self.lease_s),
                    "LFI_JOB_RECLAIM_INTERVAL_S": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.teacher = ServiceProcess(["teacher", "serve"], self.env, self.tmp / "teacher.log")
        self.env["LFI_TEACHER_URL"] = self.teacher.url  # its port is chosen already: all start at once
        self.dashboard = ServiceProcess(["dashboard"], self.env, self.tmp / "dashboard.log", health="/healthz")
        with ThreadPoolExecutor(2 + WORKERS) as pool:
            starting = [pool.submit(self.teacher.start, 300), pool.submit(self.dashboard.start, 300),
                        *(pool.submit(self._start_worker, i) for i in range(WORKERS))]
            for future in starting:
                future.result()

    def _start_worker(self, i: int) -> None:
        self.incarnations += 1  # a fresh log each time: the readiness marker of the last life must not count
        worker = CeleryWorker(f"w{i}", self.env, self.tmp / f"worker-{i}-{self.incarnations}-{i}.log")
        self.workers[i] = worker.start(timeout_s=120)

    def _stepping(self, within_s: float = STEPPING_S) -> list[str]:
        """Jobs that took a step in the last `within_s`: the work a kill interrupts. (A job whose worker is
        still starting up, or that waits in the queue, was not interrupted, and waiting for its first step
        would time the machine's load, not the recovery.)"""
        now, found = time.time(), []
        for record in self.store.list(limit=100_000):
            if JobStatus(record["status"]).terminal:
                continue
            steps = [e for _, e in self.store.events(record["id"]) if e["type"] == "step"]
            if steps and now - _ts(steps[-1]["at"]) < within_s:
                found.append(record["id"])
        return found

    def _held_by(self, worker: CeleryWorker) -> list[str]:
        """Jobs whose recorded worker (host:pid:thread) is a process of `worker`'s process group."""
        held = []
        for record in self.store.list(limit=100_000):
            if JobStatus(record["status"]).terminal or not record.get("worker"):
                continue
            with contextlib.suppress(ValueError, OSError, IndexError):
                if os.getpgid(int(record["worker"].split(":")[1])) == worker.proc.pid:
                    held.append(record["id"])
        return held

    def kill(self, component: str, restart_after_s: float) -> Kill:
        """kill -9 `component` (a worker picked at random), wait, restart it and wait until it answers."""
        running = self._stepping()
        if component == "worker":
            i = self.rng.randrange(WORKERS)
            running = sorted(set(running) | set(self._held_by(self.workers[i])))
            name, down, up = f"worker-{i}", self.workers[i].kill9, lambda: self._start_worker(i)
        elif component == "redis":
            name, down, up = "redis", self.redis.kill9, self.redis.start
        else:
            service = getattr(self, component)
            name, down, up = component, lambda: stop_group(service.proc, signal.SIGKILL, 10), \
                lambda: service.start(timeout_s=180)
        kill = Kill(name, time.time(), running)
        down()
        self.kills.append(kill)
        time.sleep(restart_after_s)
        up()
        kill.restarted_at = time.time()
        return kill

    def watch_recoveries(self) -> None:
        """A kill has recovered once its component is back and each job running at the kill took a step
        after the restart, or finished: the recovery time is from the kill to the last of those. A job the
        killed worker held waits for its lease to lapse, the reclaim scan, and a free worker."""
        for kill in self.kills:
            if kill.recovery_s is not None or kill.restarted_at is None:
                continue
            ends = [kill.restarted_at]
            for job_id in kill.running:
                end = self._back_at(job_id, kill.restarted_at)
                if end is None:
                    break
                ends.append(end)
            else:
                kill.recovery_s = max(ends) - kill.killed_at

    def _back_at(self, job_id: str, since: float) -> float | None:
        record = self.store.get(job_id)
        if JobStatus(record["status"]).terminal and _ts(record["finished_at"]) <= since:
            return since
        for _, event in self.store.events(job_id):
            if (event["type"] == "step" or (event["type"] == "status" and JobStatus(event["status"]).terminal)) \
                    and _ts(event["at"]) > since:
                return _ts(event["at"])
        return None

    def drain(self, accepted: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.watch_recoveries()
            records = self.store.list(limit=100_000)
            if len(records) >= len(accepted) and all(JobStatus(r["status"]).terminal for r in records) \
                    and all(k.recovery_s is not None for k in self.kills):
                return
            time.sleep(1.0)

    def stop(self) -> None:
        for worker in self.workers:
            if worker is not None and worker.proc is not None:
                worker.stop()
        for service in (self.dashboard, self.teacher):
            if service is not None and service.proc is not None:
                service.stop()
        self.redis.kill9()

