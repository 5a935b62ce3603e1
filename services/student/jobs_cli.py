"""`lfi worker` and `lfi train SPEC`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def worker(
    concurrency: int = typer.Option(1, help="Jobs at once on this worker (one per GPU)."),
    pool: str = typer.Option("prefork", help="prefork (a fresh child per job: CUDA-safe) or solo."),
    hostname: str = typer.Option(None, help="Celery node name (default: lfi-worker@<host>-<pid>)."),
    loglevel: str = typer.Option("INFO"),
) -> None:
    """Run a Celery worker that trains queued jobs (`student.train`)."""
    import os
    import socket

    from services.student.tasks import app

    name = hostname or f"lfi-worker@{socket.gethostname()}-{os.getpid()}"
    app.worker_main(["worker", f"--loglevel={loglevel}", f"--pool={pool}", f"--concurrency={concurrency}",
                     "-Q", "student", "--hostname", name, "--without-gossip", "--without-mingle",
                     "--without-heartbeat"])


def _load_spec(path: Path):
    import yaml
    from pydantic import ValidationError

    from shared.job_spec import JobSpec

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        console.print(f"[red]error:[/red] cannot read {path}: {exc}")
        raise typer.Exit(2) from None
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "spec"
            console.print(f"[red]invalid spec:[/red] {where}: {error['msg']}")
        raise typer.Exit(2) from None


def train(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Job spec, YAML or JSON (see docs/api.md)."),
    follow: bool = typer.Option(True, help="Follow progress until the job ends (Ctrl-C stops following only)."),
) -> None:
    """Queue a training job, then follow it with a progress bar."""
    import kombu.exceptions
    import redis

    from shared.celery_config import make_celery
    from shared.errors import LfiError
    from shared.jobs import JobStore, submit_job
    from shared.settings import get_settings

    settings = get_settings()
    spec = _load_spec(spec_path)
    store = JobStore.from_url(settings.redis_url)
    try:
        record = submit_job(store, make_celery(settings), spec, settings.data_root)
    except LfiError as exc:
        console.print(f"[red]refused:[/red] {exc.message}")
        raise typer.Exit(2) from None
    except (redis.exceptions.ConnectionError, kombu.exceptions.OperationalError) as exc:
        console.print(f"[red]error:[/red] Redis (LFI_REDIS_URL) is unreachable ({exc}); start it or fix the URL")
        raise typer.Exit(1) from None
    print(json.dumps({"id": record["id"], "status": record["status"]}))
    if not follow:
        return
    try:
        status = follow_job(store, record["id"])
    except KeyboardInterrupt:
        console.print(f"stopped following; job {record['id']} goes on (cancel it from the dashboard)")
        raise typer.Exit(130) from None
    except redis.exceptions.ConnectionError as exc:
        console.print(f"[red]error:[/red] lost Redis while following ({exc}); job {record['id']} goes on "
                      "wherever its worker can reach Redis")
        raise typer.Exit(1) from None
    raise typer.Exit(0 if status == "succeeded" else 1)


def follow_job(store, job_id: str, poll_s: float = 0.5) -> str:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from shared.jobs import JobStatus

    after = "-"
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"job {job_id} queued", total=1.0)
        while True:
            for entry_id, event in store.events(job_id, after=after):
                after = entry_id
                if event["type"] == "epoch" and "val_map" in event:
                    progress.console.print(_detection_epoch_line(event))
                elif event["type"] == "epoch":
                    held = ", ".join(f"{k} {v:.3f}" for k, v in (event.get("heldout_top1") or {}).items()
                                     if v is not None)
                    val = event.get("val_top1")
                    progress.console.print(
                        f"epoch {event['epoch']}: task {event['task_loss']:.4f} align {event['align_loss']:.4f} "
                        f"train top-1 {event['train_top1']:.3f}"
                        + (f" val {val:.3f}" if val is not None else "") + (f" held-out {held}" if held else ""))
                elif event["type"] == "status" and event.get("reason"):
                    progress.console.print(f"{event['status']}: {event['reason']}")
            record = store.get(job_id)
            progress.update(bar, completed=record.get("progress", 0.0),
                            description=f"job {job_id} {record['status']}")
            if JobStatus(record["status"]).terminal:
                break
            time.sleep(poll_s)
    if record["status"] == "failed":
        console.print(f"[red]failed:[/red] {record.get('error')}")
    else:
        console.print(f"job {job_id} {record['status']}")
    return record["status"]


def _detection_epoch_line(event: dict) -> str:
    """A detection epoch (COCO AP from the evaluator) as one line; a split without results says so."""
    def ap(result: dict | None) -> str:
        return f"AP {result['AP']:.3f} AP50 {result['AP50']:.3f}" if result else "no images"

    held = ", ".join(f"{name} {ap(result)}" for name, result in (event.get("heldout_map") or {}).items())
    return (f"epoch {event['epoch']}: task {event['task_loss']:.4f} align {event['align_loss']:.4f} "
            f"val {ap(event.get('val_map'))}" + (f" held-out {held}" if held else ""))
