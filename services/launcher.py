"""`lfi up`: the whole system as local processes: Redis, teacher, worker, dashboard.

Redis is its own, under `LFI_RUNS_ROOT/redis` with the append-only file fsynced at every write,
unless `LFI_REDIS_URL` names one: the Redis a machine already runs on 6379 may keep nothing on
disk, and a restart of it would forget every job.

Each service is the same `lfi` command the compose file runs, started in its own process group
with its log under `LFI_RUNS_ROOT/logs/`, health-checked before the next one starts. Ctrl-C (or
SIGTERM, or any service dying) stops them all in reverse order: SIGINT, then SIGKILL after a
grace period, so nothing is left behind. No service is imported here: they are processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import httpx
import yaml
from rich.console import Console

if TYPE_CHECKING:
    from shared.settings import Settings

console = Console(stderr=True)
logging.getLogger("httpx").setLevel(logging.WARNING)  # health probes are not news


class LaunchError(RuntimeError):
    """A service did not come up; the message says which and where its log is."""


@dataclass
class Service:
    name: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool]
    proc: subprocess.Popen | None = None


@dataclass
class Stack:
    runs_root: Path
    env: dict[str, str]
    services: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str], ready: Callable[[Service], bool], timeout_s: float = 300) -> Service:
        log = self.runs_root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        service = Service(name, argv, log, lambda: False)
        service.ready = lambda: ready(service)
        with log.open("ab") as out:
            service.proc = subprocess.Popen(argv, env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.services.append(service)
        deadline = time.monotonic() + timeout_s
        with console.status(f"starting {name} …"):
            while time.monotonic() < deadline:
                if service.proc.poll() is not None:
                    raise LaunchError(f"{name} exited with {service.proc.returncode}; see {log}:\n"
                                      + log.read_text(errors="replace")[-1500:])
                with contextlib.suppress(Exception):
                    if service.ready():
                        console.print(f"[green]✓[/green] {name}")
                        return service
                time.sleep(0.2)
        raise LaunchError(f"{name} not healthy after {timeout_s:.0f} s; see {log}")

    def dead(self) -> Service | None:
        return next((s for s in self.services if s.proc is not None and s.proc.poll() is not None), None)

    def stop(self, grace_s: float = 15) -> None:
        for service in reversed(self.services):
            if service.proc is None or service.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.proc.pid, signal.SIGINT)
            try:
                service.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.proc.pid, signal.SIGKILL)
                service.proc.wait(timeout=10)
            # children that outlived their leader (a Celery pool process) go with the group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.proc.pid, signal.SIGKILL)
            console.print(f"stopped {service.name}")


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _redis_ok(url: str) -> bool:
    import redis

    return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def lfi(*args: str) -> list[str]:
    return [sys.executable, "-m", "services.cli", *args]


def demo_teams(folder: Path) -> tuple[Path, str]:
    """A teams file with one admin team `demo` and a fresh key, for a machine that has none."""
    from shared.teams import hash_key

    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "key.txt"
    key = key_file.read_text().strip() if key_file.exists() else "demo-" + secrets.token_urlsafe(12)
    key_file.write_text(key + "\n")
    teams = folder / "teams.yaml"
    teams.write_text(yaml.safe_dump({"teams": [{"name": "demo", "key_sha256": hash_key(key), "weight": 1,
                                                "rate_per_s": 500, "daily_quota": 1_000_000, "admin": True}]}))
    return teams, key


def up(*, host: str, teacher_port: int, dashboard_port: int, workers: int, concurrency: int, demo: bool,
       demo_epochs: int, demo_size: int, exit_when_done: bool) -> int:
    """Start Redis (unless one answers), the teacher, the workers and the dashboard, each once the one
    before is healthy; with `demo`, queue a ViT and an I-ViT job; then watch until stopped."""
    from shared.settings import get_settings

    settings = get_settings()
    runs_root = Path(settings.runs_root).resolve()
    settings, own_redis = choose_redis(settings)
    data_root = Path(settings.data_root).resolve()
    if settings.teams_file is None and not demo:
        console.print("[red]error:[/red] set LFI_TEAMS_FILE (teams and hashed keys; see README), "
                      "or run `lfi up --demo` for a local demo team")
        return 2
    env = {"LFI_RUNS_ROOT": str(runs_root), "LFI_DATA_ROOT": str(data_root), "HF_HUB_OFFLINE": "1",
           "LFI_TEACHER_URL": f"http://{host}:{teacher_port}", "PYTHONUNBUFFERED": "1",
           "LFI_REDIS_URL": settings.redis_url}
    key = _teacher_key(settings, env, runs_root)
    if not _ports_free(host, {"teacher": teacher_port, "dashboard": dashboard_port}):
        return 2
    stack = Stack(runs_root, env)
    with _stopped_on_exit(stack):
        try:
            if own_redis:
                _start_redis(stack, settings.redis_url, runs_root)
            else:
                _ensure_redis(stack, settings.redis_url, runs_root)
            _start_services(stack, host, teacher_port, dashboard_port, workers, concurrency)
            console.print(f"\n  dashboard  http://{host}:{dashboard_port}/\n  teacher    http://{host}:{teacher_port}/docs"
                          f"\n  redis      {settings.redis_url}\n  logs       {runs_root / 'logs'}")
            if demo and key:
                console.print(f"  team key   {key}   (paste it into the dashboard)")
            job_ids = _queue_demo(settings, data_root, demo_epochs, demo_size, settings.redis_url) if demo else []
            console.print("\nCtrl-C stops everything.")
            return _watch(stack, settings.redis_url, job_ids, exit_when_done)
        except KeyboardInterrupt:
            console.print("\nstopping …")
            return 0
        except LaunchError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1


def choose_redis(settings: Settings) -> tuple[Settings, bool]:
    """(settings with the Redis to use, whether `lfi up` starts it): LFI_REDIS_URL's if it is given, else
    a redis-server of our own on a free port (whatever answers on 6379 may keep nothing on disk)."""
    if "redis_url" in settings.model_fields_set:
        return settings, False
    return settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{_free_port()}/0"}), True


def _ports_free(host: str, ports: dict[str, int]) -> bool:
    for name, port in ports.items():
        if not _port_free(host, port):
            console.print(f"[red]error:[/red] port {port} for the {name} is taken: pass --{name}-port")
            return False
    return True


def _teacher_key(settings: Settings, env: dict[str, str], runs_root: Path) -> str | None:
    """The key the services send to the teacher (put into `env`): a demo team's when there is no teams file."""
    key = settings.teacher_key
    if settings.teams_file is None:
        teams, key = demo_teams(runs_root / "demo")
        env["LFI_TEAMS_FILE"] = str(teams)
    if key:
        env["LFI_TEACHER_KEY"] = key
    return key


@contextlib.contextmanager
def _stopped_on_exit(stack: Stack) -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise KeyboardInterrupt. On the way out the stack stops with both ignored
    (a second Ctrl-C must not cut the shutdown short and leave processes behind); then the old handlers return."""

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _ensure_redis(stack: Stack, redis_url: str, runs_root: Path) -> None:
    """Use the Redis at `redis_url` if it answers; else start a local redis-server there, if it is local."""
    try:
        _redis_ok(redis_url)
        console.print(f"[green]✓[/green] redis at {redis_url} (already running)")
        return
    except Exception:
        parsed = urlparse(redis_url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise LaunchError(f"Redis at {redis_url} is unreachable and no local redis-server can be started "
                          "there (point LFI_REDIS_URL at a running Redis, or unset it to let lfi up start one)")
    _start_redis(stack, redis_url, runs_root)


def redis_argv(port: int, folder: Path) -> list[str]:
    """A redis-server that keeps what it acknowledged: an append-only file fsynced at every write (a
    `kill -9` then loses nothing it answered), no RDB snapshots."""
    return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]


def _start_redis(stack: Stack, redis_url: str, runs_root: Path) -> None:
    if shutil.which("redis-server") is None:
        raise LaunchError("redis-server is not installed: apt-get install redis-server (or `make demo`, which "
                          "installs it), or point LFI_REDIS_URL at a running Redis")
    port = urlparse(redis_url).port or 6379
    (runs_root / "redis").mkdir(parents=True, exist_ok=True)
    stack.start("redis", redis_argv(port, runs_root / "redis"), lambda s: _redis_ok(redis_url), timeout_s=30)


def _start_services(stack: Stack, host: str, teacher_port: int, dashboard_port: int, workers: int,
                    concurrency: int) -> None:
    stack.start("teacher", lfi("teacher", "serve", "--host", host, "--port", str(teacher_port)),
                lambda s: _http_ok(f"http://{host}:{teacher_port}/readyz"))
    for i in range(workers):
        name = f"worker-{i}"
        stack.start(name, lfi("worker", "--hostname", f"{name}@lfi-up", "--concurrency", str(concurrency)),
                    lambda s, n=name: f"{n}@lfi-up ready" in s.log.read_text(errors="replace"))
    stack.start("dashboard", lfi("dashboard", "--host", host, "--port", str(dashboard_port)),
                lambda s: _http_ok(f"http://{host}:{dashboard_port}/healthz"))


# The frozen setting where the teacher shows (README, "What the teacher buys the student"): the shipped
# pretrained backbone frozen, the ViT training its head, the I-ViT its head and the query projections whose
# attention, in every row of every layer, is aligned with the teacher's map (the strongest variant found).
DEMO_RECIPE = {"init": "builtin:vit-tiny-synth", "batch_size": 32, "lr": 1e-2}
DEMO_IVIT = {"ablation": "constraint-on-original", "align_rows": "each", "align_weight": 20.0}


def _queue_demo(settings: Settings, data_root: Path, epochs: int, size: int, redis_url: str) -> list[str]:
    from datetime import UTC, datetime

    from shared.celery_config import make_celery
    from shared.job_spec import JobSpec
    from shared.jobs import JobStore, submit_job
    from shared.synth import generate

    dataset = data_root / "synth"
    if not (dataset / "annotations.jsonl").exists():
        with console.status("generating the synthetic dataset …"):
            generate(dataset, n_train_per_class=size, n_val_per_class=max(2, size // 4),
                     n_shifted_per_class=max(2, size // 4), seed=0)
    store = JobStore.from_url(redis_url)
    celery = make_celery(settings.model_copy(update={"redis_url": redis_url}))
    ids = []
    group = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"  # one label for the pair: the jobs page compares it by default
    for student in ("vit", "ivit"):
        spec = JobSpec(dataset="synth", model="vit-tiny", student=student, epochs=epochs, eval_domains=["shifted"],
                       team="demo" if settings.teams_file is None else "default", checkpoint_every=20, group=group,
                       **DEMO_RECIPE, **(DEMO_IVIT if student == "ivit" else {}))
        ids.append(submit_job(store, celery, spec, data_root)["id"])
        console.print(f"queued {student} job {ids[-1]}")
    return ids


def _watch(stack: Stack, redis_url: str, job_ids: list[str], exit_when_done: bool) -> int:
    from shared.jobs import JobStatus, JobStore

    store = JobStore.from_url(redis_url) if job_ids else None
    while True:
        dead = stack.dead()
        if dead is not None:
            console.print(f"[red]{dead.name} exited with {dead.proc.returncode}[/red]; see {dead.log}")
            return 1
        if exit_when_done and store is not None:
            records = [store.get(j) for j in job_ids]
            if all(JobStatus(r["status"]).terminal for r in records):
                for r in records:
                    m = r.get("metrics") or {}
                    console.print(f"job {r['id']} ({r['spec']['student']}): {r['status']}, val top-1 "
                                  f"{m.get('val_top1')}, held-out {m.get('heldout_top1')}")
                return 0 if all(r["status"] == "succeeded" for r in records) else 1
        time.sleep(1)
