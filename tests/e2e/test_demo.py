"""End to end, the way a new user meets it: `lfi up --demo` from a clean copy of the checkout brings
up its own Redis (append-only, under the runs folder: no LFI_REDIS_URL is given), the teacher, a
worker and the dashboard; a ViT and an I-ViT job finish; the dashboard's API
shows both with metrics; Ctrl-C stops everything and leaves no process and no port behind.
The services are the same `lfi` commands docker-compose.yml runs (tests/e2e/test_compose.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_port, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _clean_copy(target: Path) -> Path:
    """Tracked and new (not ignored) files only: no .venv, no runs, no caches."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _processes_in(folder: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def test_lfi_up_demo_runs_both_jobs_and_stops_cleanly(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    checkout = _clean_copy(tmp_path / "checkout")
    state = tmp_path / "state"
    ports = {"teacher": free_port(), "dashboard": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LFI_")}
    env.update({"LFI_DATA_ROOT": str(state / "data"),
                "LFI_RUNS_ROOT": str(state / "runs"), "LFI_CACHE_DIR": str(state / "cache"),
                "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"})
    log = (tmp_path / "up.log").open("wb")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--demo", "--demo-epochs", "2", "--demo-size", "16",
         "--teacher-port", str(ports["teacher"]), "--dashboard-port", str(ports["dashboard"])],
        cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dashboard = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        key_file = state / "runs" / "demo" / "key.txt"
        wait_for(lambda: launcher.poll() is None and key_file.exists() and _listening(ports["dashboard"]), 300,
                 "the dashboard of lfi up")
        auth = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
        # its own Redis (no LFI_REDIS_URL given), named in the summary printed once every service is up
        redis_url = wait_for(lambda: re.search(r"redis\s+(redis://\S+)", (tmp_path / "up.log").read_text()), 60,
                             "the Redis URL in lfi up's summary")
        ports["redis"] = int(redis_url.group(1).rsplit(":", 1)[1].split("/")[0])

        def both_done():
            jobs = httpx.get(dashboard + "/jobs", headers=auth, timeout=5).json()["jobs"]
            return len(jobs) == 2 and all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) and jobs

        jobs = wait_for(both_done, 600, "both demo jobs", interval_s=1)
        assert sorted(j["spec"]["student"] for j in jobs) == ["ivit", "vit"]
        assert all(j["status"] == "succeeded" for j in jobs), [j.get("error") for j in jobs]
        for job in jobs:
            metrics = httpx.get(f"{dashboard}/jobs/{job['id']}/metrics", headers=auth, timeout=5).json()
            assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
            assert "shifted" in metrics["epochs"][-1]["heldout_top1"]
            aligned = [s["align_loss"] for s in metrics["steps"]]
            assert (min(aligned) > 0) if job["spec"]["student"] == "ivit" else (max(aligned) == 0)
        stats = httpx.get(dashboard + "/teacher/stats", headers=auth, timeout=5).json()
        assert stats["engine_runs"] > 0  # the I-ViT's maps came from the teacher
    finally:
        launcher.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = launcher.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            raise
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert list((state / "runs" / "redis").glob("appendonly*")), "no append-only file under runs/redis"
    time.sleep(0.5)
    assert [name for name, port in ports.items() if _listening(port)] == []
    assert _processes_in(checkout) == []
