"""Run one training job from its record: lease, status, events, cancel, resume. No Celery here.

`run_job` is what the `student.train` task calls. It is safe to call any number of times for the
same job, from any number of workers at once: only the holder of the job lease trains, a job in
a terminal state is left alone, and a job that was started before resumes from its checkpoint.
See shared/jobs.py for why recovery rests on the lease rather than on Celery's redelivery.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import NotFound
from shared.job_spec import JobSpec, check_spec, resolve_dataset
from shared.jobs import JobStatus, JobStore
from shared.settings import Settings

if TYPE_CHECKING:  # torch-side types; the worker's parent process never imports them
    from services.student.detection.trainer import DetectionConfig, DetectionTrainer
    from services.student.maps import MapSource
    from services.student.trainer import TrainConfig, Trainer

log = logging.getLogger("lfi.student.jobs")
MAX_STARTS = 5


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class LeaseKeeper:
    """Renews the job lease every lease/3 on a thread; `lost` is set if a renewal fails."""

    def __init__(self, store: JobStore, job_id: str, worker: str, lease_s: float) -> None:
        self.store, self.job_id, self.worker, self.lease_s = store, job_id, worker, lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{job_id}", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.store.renew_lease(self.job_id, self.worker, self.lease_s):
                    log.error("job %s: lease lost; stopping so that no two workers train it", self.job_id)
                    self.lost.set()
                    return
            except Exception:  # Redis blip: try again next tick; the lease outlives one missed renewal
                log.exception("job %s: lease renewal failed", self.job_id)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.release_lease(self.job_id, self.worker)


def run_job(job_id: str, store: JobStore, settings: Settings, worker: str | None = None) -> str:
    """Train job `job_id` if it is this worker's to train. Returns what happened, for logs and tests."""
    worker = worker or worker_identity()
    try:
        record = store.get(job_id)
    except NotFound:
        log.error("job %s: no record; dropping the message", job_id)
        return "unknown"
    if JobStatus(record["status"]).terminal:  # e.g. cancelled while queued: its message is dropped here
        log.info("job %s is %s already; delivery dropped", job_id, record["status"])
        return "finished-already"
    if store.cancel_requested(job_id):
        store.set_status(job_id, JobStatus.cancelled, reason="cancelled before it started")
        return "cancelled"
    if not store.acquire_lease(job_id, worker, settings.job_lease_s):
        log.info("job %s is held by %s; this delivery is a duplicate", job_id, store.lease_holder(job_id))
        store.event(job_id, {"type": "duplicate-delivery", "worker": worker})
        return "duplicate"
    with LeaseKeeper(store, job_id, worker, settings.job_lease_s) as lease:
        starts = store.redis.hincrby(store.key(job_id), "starts", 1)
        store.update(job_id, worker=worker)
        if starts > MAX_STARTS:  # its workers keep dying (out of memory?): stop handing it out
            store.set_status(job_id, JobStatus.failed, error=f"the job's worker died {starts - 1} times "
                             f"(last at step {record.get('global_step', 0)}); see the worker logs")
            return "failed"
        if not store.set_status(job_id, JobStatus.running):  # cancelled (or finished) since it was read
            log.info("job %s ended before it started here; delivery dropped", job_id)
            return "finished-already"
        store.event(job_id, {"type": "started", "worker": worker, "attempt": starts})
        try:
            outcome = _train(job_id, record, store, settings, lease)
        except Exception as exc:
            if lease.lost.is_set():  # another worker owns the job now; its outcome is that worker's to record
                log.exception("job %s: error after its lease was lost", job_id)
                return "lease-lost"
            log.exception("job %s failed", job_id)
            message = f"{type(exc).__name__}: {exc}"
            store.set_status(job_id, JobStatus.failed, error=message,
                             traceback=traceback.format_exc(limit=8)[-4000:])
            return "failed"
    return outcome


def _train(job_id: str, record: dict[str, Any], store: JobStore, settings: Settings, lease: LeaseKeeper) -> str:
    # torch is imported here, in the process that trains, never in the worker's parent process
    from services.student.data import discover
    from services.student.maps import Stopped
    from services.student.trainer import TrainConfig, Trainer

    spec = JobSpec.model_validate(record["spec"])
    dataset = check_spec(spec, settings.data_root)
    should_stop = partial(_should_stop, store, job_id, lease)
    run_dir = Path(settings.runs_root) / job_id
    if spec.task == "detection":
        trainer = _detection_trainer(spec, dataset, run_dir, store, job_id, settings, should_stop)
    else:
        config = TrainConfig.from_spec(spec, init=_resolve_init(spec.init, settings))
        data = discover(dataset, spec.eval_domains)
        map_source = _map_source(config, data.words, store, job_id, settings, should_stop) if config.aligned else None
        trainer = Trainer(config, data, run_dir, map_source=map_source, should_stop=should_stop)
    trainer.progress = JobProgress(store, job_id, trainer, lease.worker)
    store.update(job_id, run_dir=str(run_dir), total_steps=trainer.total_steps)
    try:
        result = trainer.run()
    except Stopped:  # stopped while waiting for the teacher
        result = None
    if result is not None and result.status == "completed":
        store.set_status(job_id, JobStatus.succeeded, metrics=result.final, progress=1.0)
        return "succeeded"
    if store.cancel_requested(job_id):
        store.set_status(job_id, JobStatus.cancelled, reason="cancelled while running")
        return "cancelled"
    if lease.lost.is_set():
        return "lease-lost"  # another worker owns the job now; it resumes from the checkpoint
    return "stopped"


def _detection_trainer(spec: JobSpec, dataset: Path, run_dir: Path, store: JobStore, job_id: str, settings: Settings,
                       should_stop: Callable[[], bool]) -> DetectionTrainer:
    """The DETR / I-DETR trainer on a COCO-format set; I-DETR's instance maps come from the teacher (or a store)."""
    from services.student.detection.trainer import DetectionConfig, DetectionTrainer
    from shared.coco import discover_coco

    config = DetectionConfig.from_spec(spec, init=_resolve_init(spec.init, settings))
    map_source = _map_source(config, [], store, job_id, settings, should_stop) if config.aligned else None
    return DetectionTrainer(config, discover_coco(dataset, spec.eval_domains), run_dir, map_source=map_source,
                            should_stop=should_stop)


def _should_stop(store: JobStore, job_id: str, lease: LeaseKeeper) -> bool:
    """Checked at every step and while waiting for the teacher: cancelled, or no longer this worker's job."""
    if lease.lost.is_set() or store.cancel_requested(job_id):
        return True
    if store.lease_holder(job_id) != lease.worker:  # fencing: a stalled worker notices before its next tick
        lease.lost.set()
        return True
    return False


def _map_source(config: TrainConfig | DetectionConfig, class_words: list[str], store: JobStore, job_id: str,
                settings: Settings,
                should_stop: Callable[[], bool]) -> MapSource:
    """An exported map store when the spec names one, else the teacher (waiting, and saying so, while it is down),
    asked with the dataset's class words as the vocabulary."""
    from services.student.maps import StoreMaps, TeacherMaps
    from shared.teacher_client import TeacherClient

    spec = config.spec
    if spec.map_store is not None:
        return StoreMaps(resolve_dataset(spec.map_store, settings.data_root))

    def on_wait(reason: str | None) -> None:
        if reason is None:
            store.set_status(job_id, JobStatus.running)
        else:
            store.set_status(job_id, JobStatus.waiting_teacher, reason=reason)

    client = TeacherClient(settings.teacher_url, settings.teacher_key, max_retries=2)
    return TeacherMaps(client, prompt=spec.prompt, vocabulary=class_words,
                       cache_dir=Path(settings.runs_root) / "map-cache", on_wait=on_wait, should_stop=should_stop)


class JobProgress:
    """The trainer's events, written to the job's record and event stream.

    Step events name the worker that took them. Each epoch is announced once, even across a resume:
    the record keeps `epochs_reported`, and a resumed run announces the finished epochs of its
    checkpoint that the dead worker had not.
    """

    def __init__(self, store: JobStore, job_id: str, trainer: Trainer | DetectionTrainer, worker: str = "") -> None:
        self.store, self.job_id, self.trainer, self.worker = store, job_id, trainer, worker
        self.reported = int(store.get(job_id).get("epochs_reported", 0))

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "step":
            fraction = event["global_step"] / max(1, event["total_steps"])
            self.store.update(self.job_id, progress=round(fraction, 5), global_step=event["global_step"],
                              epoch=event["epoch"])
            # who took the step: two workers' steps interleaving in time would mean the job ran twice
            self.store.event(self.job_id, {**event, "worker": self.worker})
        elif kind == "epoch":
            self._epoch(event)
        elif kind == "checkpoint":
            self.store.update(self.job_id, last_checkpoint={k: event[k] for k in ("global_step", "epoch",
                                                                                  "step_in_epoch")})
            self.store.event(self.job_id, event)
        elif kind == "resumed":
            self.store.event(self.job_id, event)
            for past in self.trainer.history:  # the resumed checkpoint's epochs, announced once
                self._epoch({"type": "epoch", **past})
        else:
            self.store.event(self.job_id, event)

    def _epoch(self, event: dict[str, Any]) -> None:
        if event["epoch"] > self.reported:
            self.store.event(self.job_id, event)
            self.reported = event["epoch"]
            self.store.update(self.job_id, epochs_reported=self.reported, metrics=event)


def _resolve_init(init: str, settings: Settings) -> str:
    if init == "scratch":
        return init
    local = Path(settings.data_root) / init
    return str(local) if local.is_dir() else init  # a folder under the data root, or a hub id


def reclaim_orphans(store: JobStore, settings: Settings, send: Callable[[str], object]) -> list[str]:
    """Queue again every job whose worker died (lease lapsed). Called every few seconds by each worker."""
    requeued = []
    for job_id in store.orphans():
        if not store.claim_reclaim(job_id, settings.job_lease_s):
            continue
        # atomic with the check that nobody holds it: a worker that just took it keeps it
        if not store.set_status(job_id, JobStatus.queued, only_if_unleased=True, worker="",
                                reason="worker lost; resuming from the last checkpoint"):
            continue
        store.event(job_id, {"type": "requeued", "reason": "lease expired"})
        send(job_id)
        requeued.append(job_id)
        log.warning("job %s lost its worker; queued again", job_id)
    return requeued


class LostMessages:
    """Re-sends the message of a job that has none: active, held and named by no worker, and not waiting
    in the broker, in every scan for at least `grace_s` (a job being picked up is in none of those
    places for a moment). A re-send that turns out to be a duplicate is harmless: the job lease lets
    one delivery train and drops the rest."""

    def __init__(self, grace_s: float, queue: str) -> None:
        self.grace_s, self.queue = grace_s, queue
        self.first_seen: dict[str, float] = {}

    def __call__(self, store: JobStore, send: Callable[[str], object], now: float) -> list[str]:
        missing = set(store.unplaced(self.queue))
        self.first_seen = {j: self.first_seen.get(j, now) for j in missing}
        resent = []
        for job_id, since in self.first_seen.items():
            if now - since < self.grace_s or not store.claim_resend(job_id, self.grace_s):
                continue
            if not store.set_status(job_id, JobStatus.queued, only_if_unleased=True, reason="message lost; sent again"):
                continue  # a worker took it, or it ended, since the scan
            store.event(job_id, {"type": "resent", "reason": "no message in the broker and no worker"})
            send(job_id)
            resent.append(job_id)
            log.warning("job %s had no message in the broker; sent again", job_id)
        for job_id in resent:
            self.first_seen.pop(job_id)
        return resent
