"""The Celery layer: the `student.train` task and each worker's reclaimer (orphans, lost messages). Thin on purpose.

Start a worker with `lfi worker`. The parent process never imports torch; each job runs in a
fresh forked child (worker_max_tasks_per_child=1), which initialises CUDA for itself.
Importing this module reads no settings: the app is configured when it is first used (the worker
starting, or `celery -A services.student.tasks inspect`), and the task reads them when it runs.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from services.student.job_runner import LostMessages, reclaim_orphans, run_job
from shared.celery_config import RESUME_PRIORITY, TRAIN_QUEUE, TRAIN_TASK, celery_conf
from shared.jobs import JobStore
from shared.settings import get_settings

log = logging.getLogger("lfi.student.tasks")
app = Celery("lfi")


@app.on_configure.connect
def _configure(sender: Celery, **_: object) -> None:
    """The shared Celery configuration, from the settings of the moment the app is first used."""
    sender.conf.update(celery_conf(get_settings()))


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    settings = get_settings()
    return run_job(job_id, JobStore.from_url(settings.redis_url, patient=True), settings)


_stop_reclaimer = threading.Event()


def _reclaim_loop() -> None:
    settings = get_settings()
    store = JobStore.from_url(settings.redis_url)
    lost_messages = LostMessages(grace_s=3 * settings.job_reclaim_interval_s, queue=TRAIN_QUEUE)
    while not _stop_reclaimer.wait(settings.job_reclaim_interval_s):
        try:
            # ahead of new jobs: a resumed job (or one whose message was lost) has waited its turn already
            send = lambda job_id: app.send_task(TRAIN_TASK, args=[job_id], priority=RESUME_PRIORITY)  # noqa: E731
            reclaim_orphans(store, settings, send)
            lost_messages(store, send, time.monotonic())
        except Exception:  # Redis away for a moment: the next round tries again
            log.exception("orphan reclaim round failed")


@worker_ready.connect
def _start_reclaimer(**_) -> None:
    threading.Thread(target=_reclaim_loop, name="lfi-reclaimer", daemon=True).start()


@worker_shutdown.connect
def _stop(**_) -> None:
    _stop_reclaimer.set()
