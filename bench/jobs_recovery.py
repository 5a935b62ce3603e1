"""Jobs: queue-to-running latency on an idle worker, and what a `kill -9` of the worker costs.

Real processes: a private redis-server and `lfi worker` subprocesses with the production job
settings (lease 15 s, reclaim scan every 5 s) unless overridden. Jobs train a plain ViT
(`student: vit`) on the synthetic set, so no teacher is needed for these timings.

    python bench/jobs_recovery.py [--jobs 5] [--kills 3] [--checkpoint-every 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.celery_config import make_celery
from shared.job_spec import JobSpec
from shared.jobs import JobStore, submit_job
from shared.settings import Settings
from shared.synth import generate
from tests.support.processes import CeleryWorker, RedisServer, wait_for


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--lease-s", type=float, default=15.0)
    parser.add_argument("--reclaim-interval-s", type=float, default=5.0)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        generate(tmp / "data" / "synth", n_train_per_class=60, n_val_per_class=2, n_shifted_per_class=0, seed=0)
        redis = RedisServer(tmp).start()
        env = {"LFI_REDIS_URL": redis.url, "LFI_DATA_ROOT": str(tmp / "data"), "LFI_RUNS_ROOT": str(tmp / "runs"),
               "LFI_JOB_LEASE_S": str(args.lease_s), "LFI_JOB_RECLAIM_INTERVAL_S": str(args.reclaim_interval_s)}
        settings = Settings(redis_url=redis.url, data_root=tmp / "data", runs_root=tmp / "runs")
        store, celery = JobStore.from_url(redis.url), make_celery(settings)
        workers: list[CeleryWorker] = []

        def start_worker() -> CeleryWorker:
            worker = CeleryWorker(f"w{len(workers)}", env, tmp / f"worker-{len(workers)}.log")
            workers.append(worker)
            return worker.start()

        def submit(**fields) -> str:
            spec = JobSpec(dataset="synth", model="vit-tiny", student="vit", batch_size=8, lr=1e-3, **fields)
            return submit_job(store, celery, spec, settings.data_root)["id"]

        try:
            worker = start_worker()
            latencies = []
            for _ in range(args.jobs):
                job_id = submit(epochs=1)
                record = wait_for(lambda j=job_id: store.get(j)["status"] in ("succeeded", "failed")
                                  and store.get(j), 120, "job")
                latencies.append(_ts(record["started_at"]) - _ts(record["created_at"]))
            print(f"queue -> running on an idle worker ({args.jobs} jobs, vit-tiny, prefork child per job)")
            print(f"{'median s':>10}{'max s':>10}{'runs':>40}")
            print(f"{statistics.median(latencies):>10.3f}{max(latencies):>10.3f}"
                  f"{[round(v, 3) for v in latencies]!s:>40}")

            print(f"\nkill -9 of the worker mid-job (checkpoint every {args.checkpoint_every} steps, "
                  f"lease {args.lease_s:g} s, reclaim scan {args.reclaim_interval_s:g} s; 30 steps per epoch)")
            print(f"{'kill at step':>13}{'resumed from':>14}{'steps lost':>12}{'kill -> resumed s':>19}"
                  f"{'epochs reported':>17}{'status':>11}")
            for _ in range(args.kills):
                job_id = submit(epochs=4, checkpoint_every=args.checkpoint_every)
                target = rng.randint(args.checkpoint_every + 1, 90)
                wait_for(lambda j=job_id, t=target: store.get(j).get("global_step", 0) >= t, 300, "steps")
                worker.kill9()
                killed = time.time()
                at_kill = store.get(job_id)["global_step"]
                worker = start_worker()
                wait_for(lambda j=job_id: store.get(j)["starts"] >= 2 and
                         any(e["type"] == "resumed" for _, e in store.events(j)), 120, "resume")
                resumed = next(e for _, e in store.events(job_id) if e["type"] == "resumed")
                record = wait_for(lambda j=job_id: store.get(j)["status"] in ("succeeded", "failed")
                                  and store.get(j), 300, "finish")
                epochs = [e["epoch"] for _, e in store.events(job_id) if e["type"] == "epoch"]
                lost = at_kill - resumed["global_step"]
                print(f"{at_kill:>13}{resumed['global_step']:>14}{lost:>12}{_ts(resumed['at']) - killed:>19.1f}"
                      f"{epochs!s:>17}{record['status']:>11}")
        finally:
            for worker in workers:
                worker.stop()
            redis.kill()


if __name__ == "__main__":
    main()
