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
from tests.support.processes import TEAM_KEYS, RedisServer

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


def _terminate(signum, frame):  # SIGTERM -> SystemExit, so the finally blocks stop redis and the teacher
    raise SystemExit(128 + signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: build the tiny one)")
    parser.add_argument("--requests", type=int, default=40, help="beta interactive requests per phase (N)")
    parser.add_argument("--flood", type=int, default=200, help="alpha bulk requests per flood (M)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.flood >= 500_000 or args.requests >= 100_000:
        parser.error("--flood must be < 500000 and --requests < 100000 (image seeds would collide)")
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model = model_or_tiny(args.model, tmp)
        redis = RedisServer(tmp).start()
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
