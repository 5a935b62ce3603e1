"""The short chaos run: the whole stack as real processes, every kind of component killed -9 once
(worker, Redis, dashboard, teacher: the order seed 2 draws; the teacher, slowest to restart, last),
jobs queued throughout. Nothing may be lost, run twice or announce an epoch twice, and every kill
must recover. Counts are asserted, never times: the recovery times are the bench's to print
(docs/reliability.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos import kill_schedule, overlapping_workers

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# Half a minute of queueing, kills every 6-9 s until each kind has died once, a 5 s job lease (a dead
# worker's job is reclaimed sooner): 73 s on this 2-core box when quiet, 4-5 min when four other
# test runs share it (most of it processes starting: the stack, the teacher again, each job's child).
SHORT = ["--minutes", "0.5", "--seed", "2", "--kill-every", "6", "9", "--restart-after", "2", "3",
         "--job-every-s", "8", "--min-kills", "4", "--drain-s", "240", "--lease-s", "5"]


def test_the_schedule_is_fixed_by_the_seed_and_every_kind_dies_in_the_first_round():
    first = kill_schedule(2, 0.5, (6, 9), (2, 3))
    assert first == kill_schedule(2, 0.5, (6, 9), (2, 3))
    assert [c for _, c, _ in first[:4]] == ["worker", "redis", "dashboard", "teacher"]
    assert sorted(c for _, c, _ in kill_schedule(7, 10, (15, 30), (2, 5))[:4]) == sorted(
        ["worker", "teacher", "dashboard", "redis"])


def test_overlapping_steps_of_two_workers_are_a_double_run_and_a_hand_over_is_not():
    def step(worker: str, at: str) -> dict:
        return {"type": "step", "worker": worker, "at": f"2026-01-01T00:00:{at}"}

    hand_over = [step("a", "01"), step("a", "02"), step("b", "05"), step("b", "06")]
    assert not overlapping_workers(hand_over)
    assert overlapping_workers([step("a", "01"), step("b", "02"), step("a", "03")])


def test_short_chaos_run_loses_nothing_and_runs_nothing_twice(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    report = tmp_path / "chaos.json"
    run = subprocess.run([sys.executable, "bench/chaos.py", *SHORT, "--json", str(report)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    print(run.stdout, "\n".join(line for line in run.stderr.splitlines() if re.search(r"\d s\b", line)))
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    outcome = json.loads(report.read_text())
    assert outcome["lost"] == [] and outcome["ran_twice"] == [], outcome
    assert outcome["jobs"] >= 4 and outcome["succeeded"] == outcome["jobs"], outcome
    assert sorted({k["component"].split("-")[0] for k in outcome["kills"]}) == ["dashboard", "redis", "teacher",
                                                                              "worker"]
    assert all(k["recovery_s"] is not None for k in outcome["kills"]), outcome["kills"]
    assert run.returncode == 0, run.stdout[-3000:]
    assert outcome["line"].startswith("jobs ") and ", lost 0, ran twice 0, duplicate epochs 0," in outcome["line"]
