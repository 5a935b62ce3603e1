"""The compose stack for real (`make compose-test`): images built on this machine, the cpu profile up,
and everything after that through the containers only — published ports on 127.0.0.1 and the docker CLI.

The stack is started by `scripts/compose_stack.py up`, the command `make compose-up` runs (dockerd
started if no engine answers, the images built, from a Debian base where Docker Hub can't be
reached). Where no engine can be had (no docker, not root) the module is skipped and says why.
The tests run in order on one stack; the last takes it down with `down -v` and checks nothing is left.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from scripts import compose_stack
from tests.support.processes import free_port, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PROJECT = "lfi-e2e"  # not the default `lfi`: a user's own stack is left alone
KEY = "demo-key"  # config/teams.demo.yaml
CHECKPOINT_EVERY = 5
SYNTH_PER_CLASS = 16  # 4 classes x 16 = 64 training images: 8 steps an epoch at batch 8
LOCK = Path("/tmp/lfi-compose-test.lock")  # two checkouts on one machine share one engine and the ports


def _port_or_free(port: int) -> int:
    with socket.socket() as s:
        busy = s.connect_ex(("127.0.0.1", port)) == 0
    return free_port() if busy else port


@dataclass
class Stack:
    env: dict[str, str]
    compose: list[str]
    teacher: str
    dashboard: str
    data: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEY}"}

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return compose_stack.docker(*args, timeout=timeout)  # StackError, with docker's stderr, when it fails

    def compose_run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.compose, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, (args, proc.stderr)
        return proc

    def container(self, service: str) -> dict:
        found = compose_stack.containers(PROJECT, service)
        assert len(found) == 1, (service, [c["Id"] for c in found])
        return found[0]

    def queue(self, **spec) -> str:
        body = {"dataset": "synth", "model": "vit-tiny", "batch_size": 8, "lr": 1e-3, "eval_domains": ["shifted"],
                "checkpoint_every": CHECKPOINT_EVERY, **spec}
        response = httpx.post(self.dashboard + "/jobs", json=body, headers=self.auth, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        response = httpx.get(f"{self.dashboard}/jobs/{job_id}", headers=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def finished(self, job_id: str, timeout_s: float = 600) -> dict:
        return wait_for(lambda: (r := self.job(job_id))["status"] in ("succeeded", "failed", "cancelled") and r,
                        timeout_s, f"job {job_id} to finish", interval_s=1)

    def logs(self, service: str) -> str:
        proc = compose_stack.docker("logs", "--tail", "60", self.container(service)["Id"], timeout=60, check=False)
        return proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (apt-get install docker.io docker-compose debootstrap)")
    try:
        compose = compose_stack.compose_command()
        compose_stack.ensure_engine()
    except compose_stack.StackError as exc:
        pytest.skip(f"no Docker engine could be started: {exc}")
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = tmp_path_factory.mktemp("compose-data")
        data.chmod(0o755)  # pytest makes it 0700; the services run as uid 1000
        ports = {"LFI_TEACHER_PORT": _port_or_free(8100), "LFI_DASHBOARD_PORT": _port_or_free(8300)}
        env = {**compose_stack.compose_env(PROJECT), "LFI_DATA_HOST": str(data),
               **{k: str(v) for k, v in ports.items()}}
        script = [sys.executable, str(ROOT / "scripts" / "compose_stack.py")]
        subprocess.run([*script, "down", "--project", PROJECT], cwd=ROOT, env=env, timeout=300)  # a leftover
        up = subprocess.run([*script, "up", "--project", PROJECT, "--synth-size", str(SYNTH_PER_CLASS),
                             "--timeout-s", "900"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
        assert up.returncode == 0, up.stderr[-5000:]
        # the images are known now: `down` and `restart` need the same variables as `up`
        env.update({k: v for k, v in compose_stack.compose_env(PROJECT, compose_stack.base_images()).items()
                    if k in ("LFI_BASE_IMAGE", "LFI_REDIS_IMAGE")})
        try:
            yield Stack(env=env, compose=compose, teacher=f"http://127.0.0.1:{ports['LFI_TEACHER_PORT']}",
                        dashboard=f"http://127.0.0.1:{ports['LFI_DASHBOARD_PORT']}", data=data / "synth")
        finally:
            subprocess.run([*script, "down", "--project", PROJECT], cwd=ROOT, env=env, timeout=300)


@pytest.fixture(scope="module")
def map_request(stack: Stack) -> dict:
    image = sorted((stack.data / "train" / "circle").glob("*.png"))[0]
    return {"image": base64.b64encode(image.read_bytes()).decode(), "vocabulary": ["circle", "square", "triangle",
                                                                                   "cross"], "grid": [8, 8]}


def test_the_stack_is_the_cpu_profile_and_redis_is_not_published(stack: Stack) -> None:
    for service in ("redis", "teacher-cpu", "worker-cpu", "dashboard"):
        container = stack.container(service)
        assert container["State"]["Health"]["Status"] == "healthy", service
        assert container["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", service
    published = {service: stack.container(service)["HostConfig"]["PortBindings"] or {}
                 for service in ("redis", "teacher-cpu", "dashboard")}
    assert published["redis"] == {}
    for service in ("teacher-cpu", "dashboard"):
        (binding,) = next(iter(published[service].values()))
        assert binding["HostIp"] == "127.0.0.1", service


def test_the_teacher_answers_with_the_demo_key_and_caches(stack: Stack, map_request: dict) -> None:
    first = httpx.post(stack.teacher + "/interactions", json=map_request, headers=stack.auth, timeout=300)
    assert first.status_code == 200, first.text
    again = httpx.post(stack.teacher + "/interactions", json=map_request, headers=stack.auth, timeout=60)
    assert again.status_code == 200, again.text
    assert first.json()["cached"] is False and again.json()["cached"] is True
    assert again.json()["key"] == first.json()["key"] and again.json()["map"]["shape"] == [8, 8]
    refused = httpx.post(stack.teacher + "/interactions", json=map_request, timeout=60)
    assert refused.status_code == 401


def test_a_job_queued_on_the_dashboard_trains_against_the_teacher_and_succeeds(stack: Stack) -> None:
    job_id = stack.queue(student="ivit", epochs=2)
    record = stack.finished(job_id)
    assert record["status"] == "succeeded", (record.get("error"), stack.logs("worker-cpu"))
    assert record["starts"] == 1 and record["progress"] == 1.0
    metrics = httpx.get(f"{stack.dashboard}/jobs/{job_id}/metrics", headers=stack.auth, timeout=10).json()
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert "shifted" in metrics["epochs"][-1]["heldout_top1"]
    assert min(s["align_loss"] for s in metrics["steps"]) > 0  # the maps came from the teacher container
    stats = httpx.get(stack.dashboard + "/teacher/stats", headers=stack.auth, timeout=10).json()
    assert stats["engine_runs"] > 0


def _crash(stack: Stack, service: str) -> dict:
    """SIGKILL to the container's main process, as the kernel's OOM killer would do it. (`docker kill
    -s KILL` is a manual stop to Docker: its restart policy then leaves the container down.)"""
    before = stack.container(service)
    os.kill(before["State"]["Pid"], 9)
    return before


def test_a_worker_killed_mid_job_is_restarted_and_the_job_finishes(stack: Stack) -> None:
    job_id = stack.queue(student="vit", epochs=6)
    wait_for(lambda: (stack.job(job_id).get("last_checkpoint") or {}).get("global_step", 0) >= 2 * CHECKPOINT_EVERY,
             300, "a second checkpoint", interval_s=0.5)
    before = _crash(stack, "worker-cpu")
    wait_for(lambda: stack.container("worker-cpu")["RestartCount"] > before["RestartCount"], 60,
             "the restart policy to restart the worker")
    at_death = stack.job(job_id)  # the dead worker writes nothing more; the job is reclaimed after its lease
    assert at_death["status"] == "running" and at_death["starts"] == 1
    lost = at_death["global_step"] - at_death["last_checkpoint"]["global_step"]
    assert 0 <= lost <= CHECKPOINT_EVERY
    record = stack.finished(job_id)
    assert record["status"] == "succeeded", (record.get("error"), stack.logs("worker-cpu"))
    assert record["starts"] == 2 and record["global_step"] == record["total_steps"]
    metrics = httpx.get(f"{stack.dashboard}/jobs/{job_id}/metrics", headers=stack.auth, timeout=10).json()
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4, 5, 6]  # each epoch once
    wait_for(lambda: stack.container("worker-cpu")["State"]["Health"]["Status"] == "healthy", 180,
             "the restarted worker's health check")


def test_redis_restarted_mid_run_keeps_jobs_queue_and_maps(stack: Stack, map_request: dict) -> None:
    key = httpx.post(stack.teacher + "/interactions", json=map_request, headers=stack.auth, timeout=60).json()["key"]
    running = stack.queue(student="vit", epochs=4)
    queued = stack.queue(student="vit", epochs=1, seed=1)  # one worker, one job at a time: this one waits
    wait_for(lambda: stack.job(running).get("global_step", 0) >= 3, 300, "the first job to train", interval_s=0.5)
    assert stack.job(queued)["status"] == "queued"
    stack.compose_run("restart", "redis")
    wait_for(lambda: stack.container("redis")["State"]["Health"]["Status"] == "healthy", 120, "redis healthy again")
    for job_id in (running, queued):
        record = stack.finished(job_id)
        assert record["status"] == "succeeded", (job_id, record.get("error"), stack.logs("worker-cpu"))
        assert record["global_step"] == record["total_steps"] and record["starts"] == 1
    cached = httpx.get(f"{stack.teacher}/interactions/{key}", headers=stack.auth, timeout=30)
    assert cached.status_code == 200, cached.text  # the map cache came back from the append-only file


def test_down_v_leaves_no_container_network_or_volume(stack: Stack) -> None:
    stack.compose_run("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={PROJECT}"
    assert stack.docker("ps", "-aq", "--filter", label).stdout.split() == []
    assert stack.docker("network", "ls", "-q", "--filter", label).stdout.split() == []
    assert stack.docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(stack.dashboard + "/healthz", timeout=2)
        pytest.fail("the dashboard still answers after down")
