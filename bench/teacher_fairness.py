"""Fair share under a bulk flood: interactive latency and batch slots, against a real redis + teacher.

    python bench/teacher_fairness.py            # tiny model, this machine

Starts a redis-server and `lfi teacher serve --max-batch-size 8 --max-wait-ms 5` on free ports (the
tiny model unless --model is given; every team weight 1). After a warm-up, each repeat runs:
  alone    team beta sends N interactive requests from 4 concurrent clients (latency of each)
  flooded  team alpha posts M bulk requests at once; 1 s later beta sends N interactive requests
           again from 4 clients
then reads GET /stats (admin key) for the batches formed during the flood. A batch is contested
when both alpha and beta had work waiting as it was formed; beta's share is its slots over all
slots of the contested batches (its weight share is 0.5).
Every image is distinct, so every request is a cold map computed on the GPU thread. The load
generator runs in this process on the same cores as the server.
Goal: p95 flooded <= 3x p95 alone, beta share ~ 0.5.

    python bench/teacher_fairness.py --weighted [--per-team 96] [--repeats 3]

Weights 2:1:1 under real contention instead: a teacher whose teams file gives alpha weight 2 and beta
and tight weight 1; each repeat the three teams post `--per-team` bulk requests at once (far more than
a batch of 8 holds). Over the batches formed while all three had work waiting, each team's share of
the slots (counts, not times). Goal: within 5 points of 0.50 / 0.25 / 0.25.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.teacher_service import _png, model_or_tiny, start_teacher
from tests.support.processes import TEAM_KEYS, RedisServer, ServiceProcess, write_teams_file

BETA_CLIENTS = 4
ADMIN = {"Authorization": f"Bearer {TEAM_KEYS['admin']}"}


def _auth(team: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEAM_KEYS[team]}"}


async def beta_run(url: str, seeds: list[int]) -> list[float]:
    """Interactive requests for `seeds` from BETA_CLIENTS concurrent clients; each request's latency in s."""
    latencies: list[float] = []
    chunks = [seeds[i::BETA_CLIENTS] for i in range(BETA_CLIENTS)]

    async def client_loop(client: httpx.AsyncClient, mine: list[int]) -> None:
        for seed in mine:
            body = {"image": _png(seed), "label": "cat", "priority": "interactive"}
            start = time.perf_counter()
            response = await client.post(url + "/interactions", json=body, headers=_auth("beta"))
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"beta request failed: {response.status_code} {response.text[:500]}")

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(client_loop(client, mine) for mine in chunks))
    return latencies


async def flood_and_beta(url: str, flood: int, alpha_seeds: range, beta_seeds: list[int]) -> tuple[list[float], int]:
    """alpha posts `flood` bulk requests at once; 1 s later beta runs. Returns beta latencies, alpha 200s."""
    limits = httpx.Limits(max_connections=flood + 10, max_keepalive_connections=flood + 10)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        alpha = [asyncio.create_task(client.post(
            url + "/interactions", json={"image": _png(seed), "label": "dog", "priority": "bulk"},
            headers=_auth("alpha"))) for seed in alpha_seeds]
        await asyncio.sleep(1.0)  # let the flood queue up first
        try:
            beta = await beta_run(url, beta_seeds)
        finally:
            responses = await asyncio.gather(*alpha, return_exceptions=True)
    ok = sum(1 for r in responses if isinstance(r, httpx.Response) and r.status_code == 200)
    return beta, ok


def stats(url: str) -> dict:
    response = httpx.get(url + "/stats", params={"recent": 2048}, headers=ADMIN, timeout=30)
    response.raise_for_status()
    return response.json()


def one_repeat(url: str, repeat: int, n: int, flood: int) -> dict:
    base = 1_000_000 * (repeat + 1)  # distinct images per repeat: nothing is served from the cache
    alone = asyncio.run(beta_run(url, list(range(base, base + n))))
    before = stats(url)["batches"]["count"]
    flooded, alpha_ok = asyncio.run(flood_and_beta(
        url, flood, range(base + 500_000, base + 500_000 + flood), list(range(base + 100_000, base + 100_000 + n))))
    after = stats(url)
    formed = after["batches"]["count"] - before
    recent = after["batches"]["recent"]
    if formed > len(recent):
        print(f"warning: {formed} batches formed, /stats keeps {len(recent)}; share is over those",
              file=sys.stderr)
    batches = recent[-formed:] if formed else []
    contested = [b for b in batches if {"alpha", "beta"} <= set(b["backlogged"])]
    total_slots = sum(b["size"] for b in contested)
    beta_slots = sum(b["teams"].get("beta", 0) for b in contested)
    p50a, p95a = (float(np.percentile(alone, q)) for q in (50, 95))
    p50f, p95f = (float(np.percentile(flooded, q)) for q in (50, 95))
    return {"p50_alone": p50a, "p95_alone": p95a, "p50_flooded": p50f, "p95_flooded": p95f,
            "ratio": p95f / p95a, "share": beta_slots / total_slots if total_slots else float("nan"),
            "contested": len(contested), "batches": formed, "alpha_ok": alpha_ok}


def print_table(results: list[dict], n: int, flood: int) -> None:
    header = ["repeat", "beta p50 alone", "beta p95 alone", "p50 flooded", "p95 flooded", "p95 ratio",
              "beta share (contested)", "contested batches", "alpha completed"]
    rows = [[str(i + 1), f"{r['p50_alone']:.3f} s", f"{r['p95_alone']:.3f} s", f"{r['p50_flooded']:.3f} s",
             f"{r['p95_flooded']:.3f} s", f"{r['ratio']:.2f}x", f"{r['share']:.2f}",
             f"{r['contested']} of {r['batches']}", f"{r['alpha_ok']}/{flood}"] for i, r in enumerate(results)]
    med = {key: statistics.median(r[key] for r in results)
           for key in ("p50_alone", "p95_alone", "p50_flooded", "p95_flooded", "ratio", "contested")}
    shares = [r["share"] for r in results if r["contested"]]  # nan where no batch was contested
    med["share"] = statistics.median(shares) if shares else float("nan")
    rows.append(["median", f"{med['p50_alone']:.3f} s", f"{med['p95_alone']:.3f} s", f"{med['p50_flooded']:.3f} s",
                 f"{med['p95_flooded']:.3f} s", f"{med['ratio']:.2f}x", f"{med['share']:.2f}",
                 f"{med['contested']:g}", ""])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"beta: {n} interactive requests from {BETA_CLIENTS} clients; alpha flood: {flood} bulk; "
          "batch 8, wait 5 ms; equal weights")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    verdict = "met" if med["ratio"] <= 3.0 else "NOT met"
    print(f"goal p95 flooded <= 3x p95 alone: {verdict} (median {med['ratio']:.2f}x); "
          f"beta share median {med['share']:.2f} (weight share 0.50)")


WEIGHTS = {"alpha": 2, "beta": 1, "tight": 1}


async def three_team_flood(url: str, per_team: int, base: int) -> int:
    """Every team of WEIGHTS posts `per_team` bulk requests at once; the number answered 200."""
    limits = httpx.Limits(max_connections=4 * per_team, max_keepalive_connections=4 * per_team)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        posts = [client.post(url + "/interactions", json={"image": _png(base + 1000 * t + i), "label": "dog",
                                                          "priority": "bulk"}, headers=_auth(team))
                 for t, team in enumerate(WEIGHTS) for i in range(per_team)]
        responses = await asyncio.gather(*posts, return_exceptions=True)
    return sum(1 for r in responses if isinstance(r, httpx.Response) and r.status_code == 200)


def weighted_shares(batches: list[dict]) -> tuple[dict[str, float], int]:
    """Each team's share of the slots of the batches formed while every team had work waiting."""
    contested = [b for b in batches if set(WEIGHTS) <= set(b["backlogged"])]
    slots = sum(b["size"] for b in contested)
    return {team: sum(b["teams"].get(team, 0) for b in contested) / max(1, slots) for team in WEIGHTS}, len(contested)


def weighted_main(tmp: Path, model: str, redis: RedisServer, per_team: int, repeats: int) -> None:
    teams = write_teams_file(tmp / "teams-weighted.yaml", {team: {"weight": w} for team, w in WEIGHTS.items()})
    env = {"LFI_TEAMS_FILE": str(teams), "LFI_REDIS_URL": redis.url, "LFI_TEACHER_MODEL": model}
    server = ServiceProcess(["teacher", "serve", "--max-batch-size", "8", "--max-wait-ms", "5",
                             "--request-timeout-s", "1800"], env, tmp / "teacher-weighted.log").start()
    rows = []
    try:
        for repeat in range(repeats):
            before = stats(server.url)["batches"]["count"]
            ok = asyncio.run(three_team_flood(server.url, per_team, 2_000_000 * (repeat + 1)))
            after = stats(server.url)["batches"]
            formed = after["count"] - before
            shares, contested = weighted_shares(after["recent"][-formed:] if formed else [])
            rows.append((repeat + 1, shares, contested, formed, ok))
            print(f"repeat {repeat + 1}: {shares} over {contested} contested batches", file=sys.stderr)
    finally:
        server.stop()
    print(f"weights alpha 2, beta 1, tight 1; each posts {per_team} bulk requests at once; batch 8, wait 5 ms")
    print(f"{'repeat':<8}{'alpha':>8}{'beta':>8}{'tight':>8}{'contested batches':>20}{'answered':>10}")
    for repeat, shares, contested, formed, ok in rows:
        print(f"{repeat:<8}{shares['alpha']:>8.3f}{shares['beta']:>8.3f}{shares['tight']:>8.3f}"
              f"{f'{contested} of {formed}':>20}{f'{ok}/{3 * per_team}':>10}")
    worst = max(abs(shares[t] - w / sum(WEIGHTS.values())) for _, shares, *_ in rows for t, w in WEIGHTS.items())
    print(f"goal: every share within 0.05 of 0.50/0.25/0.25: {'met' if worst <= 0.05 else 'NOT met'} "
          f"(worst deviation {worst:.3f})")


def _terminate(signum, frame):  # SIGTERM -> SystemExit, so the finally blocks stop redis and the teacher
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: build the tiny one)")
    parser.add_argument("--requests", type=int, default=40, help="beta interactive requests per phase (N)")
    parser.add_argument("--flood", type=int, default=200, help="alpha bulk requests per flood (M)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weighted", action="store_true", help="the 2:1:1 weights experiment instead")
    parser.add_argument("--per-team", type=int, default=96, help="with --weighted: requests per team per repeat")
    args = parser.parse_args()
    if args.flood >= 500_000 or args.requests >= 100_000:
        parser.error("--flood must be < 500000 and --requests < 100000 (image seeds would collide)")
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model = model_or_tiny(args.model, tmp)
        redis = RedisServer(tmp).start()
        if args.weighted:
            try:
                return weighted_main(tmp, model, redis, args.per_team, args.repeats)
            finally:
                redis.kill()
        try:
            server = start_teacher(tmp, model, redis, "--max-batch-size", "8", "--max-wait-ms", "5")
            try:
                asyncio.run(beta_run(server.url, list(range(900, 900 + 2 * BETA_CLIENTS))))  # warm-up
                results = []
                for repeat in range(args.repeats):
                    results.append(one_repeat(server.url, repeat, args.requests, args.flood))
                    r = results[-1]
                    print(f"repeat {repeat + 1}: p95 alone {r['p95_alone']:.3f} s, flooded {r['p95_flooded']:.3f} s"
                          f" ({r['ratio']:.2f}x), beta share {r['share']:.2f} over {r['contested']} batches",
                          file=sys.stderr)
            finally:
                server.stop()
        finally:
            redis.kill()
    print_table(results, args.requests, args.flood)


if __name__ == "__main__":
    main()
