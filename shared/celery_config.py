"""The Celery app's configuration, shared by workers and by whoever queues (no torch here).

The dashboard and `lfi train` send `student.train` by name through this app; only the worker
registers the task (services/student/tasks.py).
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings, get_settings

TRAIN_TASK = "student.train"
TRAIN_QUEUE = "student"
# The Redis transport keeps one list per priority step (0, 3, 6, 9; the queue's own name for 0) and a
# worker takes from step 0 first. New jobs go to step 3; a job resumed after its worker died, or whose
# message was lost, goes to step 0: it resumes on the next free worker, not behind every waiting job.
NEW_JOB_PRIORITY = 3
RESUME_PRIORITY = 0
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's: list `student\x06\x163` holds step 3


def queue_lists(queue: str = TRAIN_QUEUE) -> list[str]:
    """The Redis lists that hold `queue`'s waiting messages, one per priority step."""
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in (3, 6, 9)]


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("lfi")
    app.conf.update(celery_conf(settings))
    return app


def celery_conf(settings: Settings) -> dict:
    """Every Celery setting lfi uses: one dict for the sending side and the worker alike."""
    return dict(
        broker_url=settings.redis_url,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],  # pickle refused: a message is data, never code
        result_serializer="json",
        task_ignore_result=True,  # outcomes live in the job record, not in a result backend
        worker_prefetch_multiplier=1,  # a worker holds one job at a time, none waits behind hours of training
        task_acks_late=True,  # with prefetch 1: a busy worker reserves nothing else
        task_reject_on_worker_lost=False,  # recovery is the job lease's business, not a requeue loop
        task_default_queue=TRAIN_QUEUE,
        task_routes={TRAIN_TASK: {"queue": TRAIN_QUEUE}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={
            "visibility_timeout": settings.celery_visibility_timeout_s,
            "unacked_restore_interval": settings.celery_restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        # One forked child per job: CUDA is initialised only in the process that trains, and a
        # job's GPU memory goes back when its child exits.
        worker_max_tasks_per_child=1,
    )
