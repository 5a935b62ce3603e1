"""Teacher service throughput and latency, against a real redis-server and uvicorn process.

    python bench/teacher_service.py            # tiny model, this machine

Prints one table:
  cached batch   maps/s through POST /interactions/batch with key-only items (256 per call)
  cached single  p50 / p99 latency of POST /interactions (a cached 64x64 PNG) at 50 concurrent clients
  cold           maps/s on the tiny model for 96 distinct images, dynamic batching on (batch 8,
                 wait 10 ms) with capture during decoding (the default) and with `--capture
                 second-pass`, and batching off (batch 1)
The load generator runs in this process, on the same cores as the server: the numbers are a
floor for what the server does on a machine of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.processes import TEAM_KEYS, RedisServer, ServiceProcess, write_teams_file

AUTH = {"Authorization": f"Bearer {TEAM_KEYS['alpha']}"}


def _png(seed: int, size: int = 64) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def model_or_tiny(model: str | None, tmp: Path) -> str:
    """The checkpoint given on the command line, or the tiny one built into `tmp`."""
    if model is not None:
        return model
    from services.teacher.tiny.build import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp / "tiny", "tiny"))


def start_teacher(tmp: Path, model: str, redis: RedisServer, *args: str) -> ServiceProcess:
    env = {"LFI_TEAMS_FILE": str(write_teams_file(tmp / "teams.yaml")), "LFI_REDIS_URL": redis.url,
           "LFI_TEACHER_MODEL": model}
    return ServiceProcess(["teacher", "serve", *args], env, tmp / f"teacher-{time.time_ns()}.log").start()


async def fill(url: str, n: int, grid=(14, 14)) -> list[str]:
    async with httpx.AsyncClient(timeout=600) as client:
        keys = []
        for start in range(0, n, 64):
            items = [{"image": _png(i), "label": "cat", "grid": list(grid), "priority": "bulk"}
                     for i in range(start, min(n, start + 64))]
            response = await client.post(url + "/interactions/batch", json={"items": items}, headers=AUTH)
            keys += [item["key"] for item in response.json()["items"]]
        return keys


async def cached_batch(url: str, keys: list[str], seconds: float) -> float:
    body = {"items": [{"key": k} for k in keys]}
    async with httpx.AsyncClient(timeout=60) as client:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            response = await client.post(url + "/interactions/batch", json=body, headers=AUTH)
            assert response.status_code == 200
            done += len(keys)
        return done / (time.perf_counter() - start)


async def cached_single(url: str, clients: int, per_client: int) -> list[float]:
    body = {"image": _png(0), "label": "cat", "grid": [14, 14]}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        assert (await client.post(url + "/interactions", json=body, headers=AUTH)).status_code == 200

        async def loop():
            for _ in range(per_client):
                start = time.perf_counter()
                response = await client.post(url + "/interactions", json=body, headers=AUTH)
                latencies.append(time.perf_counter() - start)
                assert response.json()["cached"] is True

        await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies


async def cold(url: str, n: int, offset: int) -> float:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(*(client.post(
            url + "/interactions", json={"image": _png(offset + i), "label": "cat", "priority": "bulk"},
            headers=AUTH) for i in range(n)))
        elapsed = time.perf_counter() - start
    assert all(r.status_code == 200 and not r.json()["cached"] for r in responses)
    return n / elapsed


def wrk_single(url: str, tmp: Path, clients: int, seconds: int) -> tuple[float, float, float] | None:
    """p50 ms, p99 ms, requests/s from wrk (C, one thread) if it is installed; None otherwise."""
    import json
    import re
    import shutil
    import subprocess

    if shutil.which("wrk") is None:
        return None
    body = tmp / "body.json"
    body.write_text(json.dumps({"image": _png(0), "label": "cat", "grid": [14, 14]}))
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = io.open("{body}"):read("*a")\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "{AUTH["Authorization"]}"\n'
    )
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--latency", "-s", str(script),
                          url + "/interactions"], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return ms("50%"), ms("99%"), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint folder (default: build the tiny one)")
    parser.add_argument("--cold-n", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model = model_or_tiny(args.model, tmp)
        redis = RedisServer(tmp).start()
        rows = []
        try:
            server = start_teacher(tmp, model, redis, "--max-batch-size", "8", "--max-wait-ms", "10")
            try:
                keys = asyncio.run(fill(server.url, 256))
                rate = asyncio.run(cached_batch(server.url, keys, 5.0))
                rows.append(("cached batch (256 keys/call)", f"{rate:,.0f} maps/s", "goal >= 5,000 maps/s"))
                asyncio.run(cached_single(server.url, 1, 2))  # make it cached
                measured = wrk_single(server.url, tmp, 50, 10)
                if measured is not None:
                    p50, p99, rps = measured
                    rows.append(("cached single, 50 clients (wrk)", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                                 f"goal p99 <= 20 ms; {rps:,.0f} req/s"))
                lat = sorted(asyncio.run(cached_single(server.url, 50, 40)))
                p50, p99 = (float(np.percentile(lat, q)) * 1000 for q in (50, 99))
                rows.append(("cached single, 50 clients (httpx)", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                             f"{len(lat)} requests; Python client shares the cores"))
                on = asyncio.run(cold(server.url, args.cold_n, 10_000))
                rows.append(("cold, dynamic batching on (8, 10 ms), capture decode", f"{on:.2f} maps/s",
                             f"{args.cold_n} images"))
            finally:
                server.stop()
            server = start_teacher(tmp, model, redis, "--max-batch-size", "8", "--max-wait-ms", "10",
                                   "--capture", "second-pass")
            try:
                second = asyncio.run(cold(server.url, args.cold_n, 30_000))
                rows.append(("cold, dynamic batching on, capture second-pass", f"{second:.2f} maps/s",
                             f"decode/second-pass = {on / second:.2f}x"))
            finally:
                server.stop()
            server = start_teacher(tmp, model, redis, "--max-batch-size", "1", "--max-wait-ms", "0")
            try:
                off = asyncio.run(cold(server.url, args.cold_n, 20_000))
                rows.append(("cold, dynamic batching off (1)", f"{off:.2f} maps/s",
                             f"on/off = {on / off:.2f}x"))
            finally:
                server.stop()
        finally:
            redis.kill()
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'result':<28} note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<28} {note}")


if __name__ == "__main__":
    main()
