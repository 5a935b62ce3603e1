"""The job store against a real redis-server: atomic status moves, races between them, and finding jobs
whose Celery message is gone (with real Celery messages in the broker list)."""

from __future__ import annotations

import threading

import pytest

from shared.celery_config import NEW_JOB_PRIORITY, RESUME_PRIORITY, TRAIN_QUEUE, TRAIN_TASK, make_celery, queue_lists
from shared.job_spec import JobSpec
from shared.jobs import ACTIVE_JOBS, JobStatus, JobStore
from shared.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def store(redis_server) -> JobStore:
    return JobStore.from_url(redis_server.url)


def _job(store: JobStore, **fields) -> str:
    return store.create(JobSpec(dataset="synth", **fields))["id"]


def _statuses(store: JobStore, job_id: str) -> list[str]:
    return [e["status"] for _, e in store.events(job_id) if e["type"] == "status"]


def test_a_terminal_status_is_final_and_each_change_is_one_event(store):
    job_id = _job(store)
    assert store.set_status(job_id, JobStatus.running)
    started = store.get(job_id)["started_at"]
    assert store.set_status(job_id, JobStatus.waiting_teacher, reason="teacher down")
    assert store.set_status(job_id, JobStatus.running)
    assert store.get(job_id)["started_at"] == started  # set once, by the first start
    assert store.set_status(job_id, JobStatus.succeeded, metrics={"val_top1": 0.5})
    assert not store.set_status(job_id, JobStatus.queued, worker="")
    record = store.get(job_id)
    assert record["status"] == "succeeded" and record["metrics"] == {"val_top1": 0.5} and "finished_at" in record
    assert not store.redis.sismember(ACTIVE_JOBS, job_id)
    assert _statuses(store, job_id) == ["queued", "running", "waiting-teacher", "running", "succeeded"]


def test_conditions_only_from_and_only_if_unleased(store):
    job_id = _job(store)
    store.set_status(job_id, JobStatus.running)
    assert not store.set_status(job_id, JobStatus.cancelled, only_from={JobStatus.queued})
    assert store.acquire_lease(job_id, "w1", 30)
    assert not store.set_status(job_id, JobStatus.queued, only_if_unleased=True)
    store.release_lease(job_id, "w1")
    assert store.set_status(job_id, JobStatus.queued, only_if_unleased=True, worker="")
    assert store.get(job_id)["status"] == "queued" and store.get(job_id)["worker"] == ""


def test_a_finish_racing_a_reclaim_is_never_undone(store):
    """The reclaimer's "queued" and the worker's "succeeded" at the same moment, 100 times: whichever
    lands first, the job ends succeeded, announced once, and out of the active set."""
    ids = [_job(store) for _ in range(100)]
    for job_id in ids:
        store.set_status(job_id, JobStatus.running, worker="w1")
    barrier = threading.Barrier(2)

    def race(job_id: str, status: JobStatus, **fields) -> None:
        barrier.wait()
        JobStore(store.redis).set_status(job_id, status, **fields)

    for job_id in ids:
        threads = [threading.Thread(target=race, args=(job_id, JobStatus.succeeded)),
                   threading.Thread(target=race, args=(job_id, JobStatus.queued), kwargs={"worker": ""})]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for job_id in ids:
        assert store.get(job_id)["status"] == "succeeded"
        assert _statuses(store, job_id).count("succeeded") == 1
    assert not store.redis.smembers(ACTIVE_JOBS)


def test_a_cancel_racing_a_reclaim_is_not_lost(store, tmp_path):
    """Cancel and requeue at once: either the job is cancelled now, or it is queued with the cancel flag
    and its next delivery cancels it. Never queued to run with the cancel forgotten."""
    from services.student.job_runner import run_job

    settings = Settings(data_root=tmp_path, runs_root=tmp_path)  # the cancel path reads no more of it
    ids = [_job(store) for _ in range(50)]
    for job_id in ids:
        store.set_status(job_id, JobStatus.running, worker="dead-worker")
    barrier = threading.Barrier(2)

    def cancel(job_id: str) -> None:
        barrier.wait()
        JobStore(store.redis).request_cancel(job_id)

    def reclaim(job_id: str) -> None:
        barrier.wait()
        JobStore(store.redis).set_status(job_id, JobStatus.queued, only_if_unleased=True, worker="")

    for job_id in ids:
        threads = [threading.Thread(target=cancel, args=(job_id,)), threading.Thread(target=reclaim, args=(job_id,))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if store.get(job_id)["status"] != "cancelled":  # the delivery of the requeued message
            assert run_job(job_id, store, settings, worker="w2") == "cancelled"
    assert all(store.get(j)["status"] == "cancelled" for j in ids)
    assert all(_statuses(store, j).count("cancelled") == 1 for j in ids)


def test_a_job_without_a_message_is_found_and_one_with_a_message_is_not(store, redis_server):
    celery = make_celery(Settings(redis_url=redis_server.url))
    sent, resumed, lost, held, named = (_job(store) for _ in range(5))
    # real messages, waiting in the broker's lists: a new job's (priority step 3), a resumed one's (step 0)
    celery.send_task(TRAIN_TASK, args=[sent], priority=NEW_JOB_PRIORITY)
    celery.send_task(TRAIN_TASK, args=[resumed], priority=RESUME_PRIORITY)
    assert store.redis.llen(TRAIN_QUEUE) == 1 and store.redis.llen(queue_lists()[1]) == 1
    store.acquire_lease(held, "w1", 30)  # a worker has it
    store.set_status(named, JobStatus.running, worker="w1")  # a worker named: the orphan scan's business
    assert store.waiting_in_broker(TRAIN_QUEUE) == {sent, resumed}
    assert store.unplaced(TRAIN_QUEUE) == [lost]
    store.set_status(lost, JobStatus.cancelled)
    assert store.unplaced(TRAIN_QUEUE) == []


def test_lost_messages_waits_out_the_grace_then_resends_once(store):
    from services.student.job_runner import LostMessages

    job_id = _job(store)
    sent: list[str] = []
    resend = LostMessages(grace_s=10, queue=TRAIN_QUEUE)
    assert resend(store, sent.append, now=100.0) == []  # first seen: maybe a worker is taking it right now
    assert resend(store, sent.append, now=105.0) == []
    assert resend(store, sent.append, now=110.0) == [job_id]
    other = LostMessages(grace_s=10, queue=TRAIN_QUEUE)  # another worker's scanner, same moment
    other(store, sent.append, now=0.0)
    assert other(store, sent.append, now=10.0) == []  # the first one's claim holds
    assert sent == [job_id]
    assert [e["type"] for _, e in store.events(job_id)][-1] == "resent"
