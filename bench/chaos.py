"""Chaos over the whole stack: jobs keep flowing while a worker, the teacher, the dashboard or Redis is
`kill -9`ed and restarted, and not one job may be lost or run twice.

Real processes on free ports: a private redis-server with an append-only file fsynced at every write
(what `lfi up` starts), the teacher (tiny model), two `lfi worker`s and the dashboard. A stream of
small jobs (ViT and I-ViT, teams alpha, beta and tight) is queued through the dashboard's HTTP API
(a refused or unanswered POST is retried until it is accepted). Every 15-30 s (`--kill-every`) one
component dies: each round of four kills is a seeded shuffle of worker / teacher / dashboard / Redis,
so every kind dies once in the first four. It comes back `--restart-after` (2-5 s) later, and the
next gap counts from that restart. After `--minutes`, queueing stops, and so do the kills unless
`--min-kills` asks for more; then every job is waited for (`--drain-s`), and the job records and
events are read:

  lost        a job accepted (201) whose record is gone, or that did not succeed
  ran twice   a job whose steps were reported by two workers at overlapping times
  dup epochs  an epoch announced twice for one job
  recovery    per kill: until the component answers again and every job that was taking steps at the
              kill, or that the killed worker held, has taken a step after the restart (or finished)

    python bench/chaos.py [--minutes 5] [--seed 0]

Prints a table per component, then one line
`jobs N, kills W/T/D/R, succeeded N, lost 0, ran twice 0, duplicate epochs 0, longest recovery X s`,
and exits 1 if anything was lost or ran twice.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_stack import COMPONENTS, ChaosStack, Kill
from shared.jobs import JobStatus, JobStore
from tests.support.processes import TEAM_KEYS

TEAMS = ("alpha", "beta", "tight")


@dataclass
class Outcome:
    jobs: int
    succeeded: int
    lost: list[str]
    unfinished: list[str]  # of the lost: still queued or running when the drain ran out
    ran_twice: list[str]
    duplicate_epochs: list[str]
    steps_redone: int
    kills: list[Kill] = field(default_factory=list)

    def line(self) -> str:
        counts = "/".join(str(sum(k.component.startswith(c) for k in self.kills)) for c in ("worker", "teacher",
                                                                                         "dashboard", "redis"))
        longest = max((k.recovery_s for k in self.kills if k.recovery_s is not None), default=0.0)
        unrecovered = sum(k.recovery_s is None for k in self.kills)
        tail = f" ({unrecovered} kills never recovered)" if unrecovered else ""
        if self.unfinished:
            tail += f" ({len(self.unfinished)} of the lost still unfinished when the drain ran out)"
        return (f"jobs {self.jobs}, kills {counts}, succeeded {self.succeeded}, lost {len(self.lost)}, "
                f"ran twice {len(self.ran_twice)}, duplicate epochs {len(self.duplicate_epochs)}, "
                f"longest recovery {longest:.1f} s{tail}")

    @property
    def ok(self) -> bool:
        return not (self.lost or self.ran_twice or self.duplicate_epochs) and all(
            k.recovery_s is not None for k in self.kills)


def kill_schedule(seed: int, minutes: float, every: tuple[float, float],
                  restart_after: tuple[float, float]) -> list[tuple[float, str, float]]:
    """(seconds since the last restart, component, seconds until its restart), fixed by `seed`. The gap
    counts from the last restart, not the last kill: a slow restart (the teacher loading its model on a
    busy machine) must not make the next kill follow at once."""
    rng = random.Random(seed)
    schedule, total, kinds = [], 0.0, []
    while total < minutes * 60 or len(schedule) < 8:  # spare kills for --min-kills
        gap = rng.uniform(*every)
        total += gap
        if not kinds:
            kinds = list(COMPONENTS)
            rng.shuffle(kinds)
        schedule.append((gap, kinds.pop(), rng.uniform(*restart_after)))
    return schedule


def job_spec(n: int) -> dict:
    return {"dataset": "small", "model": "vit-tiny", "student": "ivit" if n % 2 else "vit", "epochs": 2,
            "batch_size": 8, "lr": 1e-3, "checkpoint_every": 1, "team": TEAMS[n % len(TEAMS)]}


def submit(dashboard_url: str, n: int, give_up_s: float = 120.0) -> str:
    """Queue job `n` through the dashboard, retrying while it (or Redis behind it) is down."""
    team = TEAMS[n % len(TEAMS)]
    deadline = time.monotonic() + give_up_s
    while True:
        try:
            response = httpx.post(dashboard_url + "/jobs", json=job_spec(n), timeout=10,
                                  headers={"Authorization": f"Bearer {TEAM_KEYS[team]}"})
            if response.status_code == 201:
                return response.json()["id"]
            if response.status_code < 500:
                raise RuntimeError(f"job {n} refused: {response.status_code} {response.text[:300]}")
        except httpx.HTTPError:
            pass  # the dashboard is down: a client retries
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {n} not accepted in {give_up_s:.0f} s")
        time.sleep(1.0)


def overlapping_workers(steps: list[dict]) -> bool:
    """Steps reported by two workers at overlapping times: each worker's steps span [first, last];
    spans of different workers may touch end to start (a resume) but not overlap."""
    spans: dict[str, list[str]] = {}
    for step in steps:
        span = spans.setdefault(step.get("worker", "?"), [step["at"], step["at"]])
        span[0], span[1] = min(span[0], step["at"]), max(span[1], step["at"])
    ordered = sorted(spans.values())
    return any(later[0] < earlier[1] for earlier, later in itertools.pairwise(ordered))


def judge(store: JobStore, accepted: list[str]) -> Outcome:
    records = {r["id"]: r for r in store.list(limit=100_000)}
    lost = [j for j in accepted if j not in records or records[j]["status"] != "succeeded"]
    lost += [j for j, r in records.items() if j not in accepted and r["status"] != "succeeded"]
    ran_twice, duplicate_epochs, redone = [], [], 0
    for job_id in records:
        events = [e for _, e in store.events(job_id)]
        steps = [e for e in events if e["type"] == "step"]
        epochs = [e["epoch"] for e in events if e["type"] == "epoch"]
        if overlapping_workers(steps):
            ran_twice.append(job_id)
        if len(epochs) != len(set(epochs)):
            duplicate_epochs.append(job_id)
        redone += len(steps) - len({e["global_step"] for e in steps})
    succeeded = sum(r["status"] == "succeeded" for r in records.values())
    unfinished = [j for j in lost if j in records and not JobStatus(records[j]["status"]).terminal]
    return Outcome(len(records), succeeded, lost, unfinished, ran_twice, duplicate_epochs, redone)


def run(args: argparse.Namespace, tmp: Path) -> Outcome:
    schedule = kill_schedule(args.seed, args.minutes, tuple(args.kill_every), tuple(args.restart_after))
    stack = ChaosStack(tmp, lease_s=args.lease_s, seed=args.seed)
    accepted: list[str] = []
    try:
        begun = time.monotonic()
        stack.start()
        print(f"stack up in {time.monotonic() - begun:.0f} s", file=sys.stderr)
        started = time.monotonic()
        end = started + args.minutes * 60
        n, next_job, last_restart = 0, started, started

        def until(moment: float) -> None:
            nonlocal n, next_job
            while time.monotonic() < moment:
                if next_job <= time.monotonic() < end:  # queueing stops at --minutes; kills may go on
                    accepted.append(submit(stack.dashboard.url, n))
                    n, next_job = n + 1, time.monotonic() + args.job_every_s
                stack.watch_recoveries()
                time.sleep(0.2)

        for gap, component, restart_after in schedule:
            if last_restart + gap > end and len(stack.kills) >= args.min_kills:
                break
            until(last_restart + gap)
            stack.kill(component, restart_after)
            last_restart = time.monotonic()
            print(f"{last_restart - started:6.0f} s  killed and restarted {stack.kills[-1].component}", file=sys.stderr)
        until(end)
        drain_from = time.monotonic()
        stack.drain(accepted, args.drain_s)
        print(f"drained in {time.monotonic() - drain_from:.0f} s", file=sys.stderr)
        outcome = judge(stack.store, accepted)
        outcome.kills = stack.kills
        return outcome
    finally:
        stack.stop()


def _median_max(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}, {max(values):.1f}" if values else "-"


def print_report(outcome: Outcome, args: argparse.Namespace, wall_s: float) -> None:
    every, restart = args.kill_every, args.restart_after
    print(f"chaos: {args.minutes:g} min, seed {args.seed}, a kill every {every[0]:g}-{every[1]:g} s,"
          f" restart after {restart[0]:g}-{restart[1]:g} s, lease {args.lease_s:g} s, "
          f"a job every {args.job_every_s:g} s; {wall_s:.0f} s wall")
    print(f"{'component':<11}{'kills':>6}{'back up s (median, max)':>25}{'work resumed s (median, max)':>30}")
    for kind in COMPONENTS:
        kills = [k for k in outcome.kills if k.component.startswith(kind)]
        back = [k.restarted_at - k.killed_at for k in kills if k.restarted_at is not None]
        resumed = [k.recovery_s for k in kills if k.recovery_s is not None]
        print(f"{kind:<11}{len(kills):>6}{_median_max(back):>25}{_median_max(resumed):>30}")
    print(f"steps redone after kills (taken again from a checkpoint): {outcome.steps_redone}")
    for name in ("lost", "unfinished", "ran_twice", "duplicate_epochs"):
        if getattr(outcome, name):
            print(f"{name}: {getattr(outcome, name)}")
    print(outcome.line())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-every", type=float, nargs=2, default=[15.0, 30.0], metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--restart-after", type=float, nargs=2, default=[2.0, 5.0], metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--min-kills", type=int, default=0,
                        help="go on past --minutes until this many kills (4: every kind dies once)")
    parser.add_argument("--job-every-s", type=float, default=20.0, help="queue a job this often")
    parser.add_argument("--lease-s", type=float, default=10.0, help="LFI_JOB_LEASE_S of the workers")
    parser.add_argument("--drain-s", type=float, default=600.0, help="how long to wait for the jobs at the end")
    parser.add_argument("--json", type=Path, help="also write the kills and the outcome here")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lfi-chaos-") as tmp:
        outcome = run(args, Path(tmp))
    print_report(outcome, args, time.monotonic() - begun)
    if args.json:
        args.json.write_text(json.dumps({"line": outcome.line(), "ok": outcome.ok, "jobs": outcome.jobs,
                                         "succeeded": outcome.succeeded, "lost": outcome.lost,
                                         "unfinished": outcome.unfinished,
                                         "ran_twice": outcome.ran_twice, "steps_redone": outcome.steps_redone,
                                         "kills": [k.__dict__ for k in outcome.kills]}, indent=1))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
