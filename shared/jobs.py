"""Training jobs: the record in Redis, progress events, cancel, and the job lease.

Records (contract in ARCHITECTURE.md): hash `lfi:job:<id>`, index `lfi:jobs` (sorted by creation
time), events on the stream `lfi:job:<id>:events`, cancel flag `lfi:job:<id>:cancel`.

Why a lease. With a Redis broker, Celery redelivers an unacked message only after
`visibility_timeout`, and redelivers a task that runs longer than that while it still runs. A
training run lasts hours, so neither a short timeout nor "acks_late and wait" recovers a dead
worker's job in time without also running long jobs twice. Instead:

- a worker runs a job only while it holds `lfi:job:<id>:lease` (SET NX PX), renewed by a
  heartbeat every lease/3; any second delivery of the job finds the lease held and returns;
- every worker looks, every few seconds, at the jobs marked active (`lfi:jobs:active`); a job
  whose lease has lapsed lost its worker, and is queued again (once: a reclaim marker) to resume
  from its last checkpoint on the next free worker;
- a worker whose renewal fails stops training at the next step, so no two run at once.
No torch here: the dashboard uses this module too.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis

from shared.errors import NotFound
from shared.job_spec import JobSpec, check_spec

JOB_PREFIX = "lfi:job:"
JOB_INDEX = "lfi:jobs"
ACTIVE_JOBS = "lfi:jobs:active"
EVENTS_MAXLEN = 20_000
PATIENT_WAIT_S = 120.0  # how long a worker waits out a Redis restart before a store call fails


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    waiting_teacher = "waiting-teacher"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str, patient: bool = False) -> JobStore:
        """`patient`: every command retries, with backoff, for about `PATIENT_WAIT_S` while Redis is
        unreachable or still loading its append-only file. Workers use it, so a Redis restart pauses
        training instead of failing it; the dashboard does not (it answers 503 at once)."""
        if not patient:
            return cls(redis.Redis.from_url(url, decode_responses=True))
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=int(PATIENT_WAIT_S / 2))
        return cls(redis.Redis.from_url(url, decode_responses=True, retry=retry, socket_connect_timeout=2,
                                        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                                                        redis.exceptions.BusyLoadingError]))

    # -- records -----------------------------------------------------------------------------------
    @staticmethod
    def key(job_id: str) -> str:
        return JOB_PREFIX + job_id

    def create(self, spec: JobSpec) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:16]
        record = {"id": job_id, "team": spec.team, "spec": spec.model_dump_json(), "status": JobStatus.queued,
                  "created_at": now_iso(), "starts": 0, "progress": 0.0}
        pipe = self.redis.pipeline()
        pipe.hset(self.key(job_id), mapping={k: str(v) for k, v in record.items()})
        pipe.zadd(JOB_INDEX, {job_id: time.time()})
        pipe.sadd(ACTIVE_JOBS, job_id)
        pipe.execute()
        self.event(job_id, {"type": "status", "status": JobStatus.queued})
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        raw = self.redis.hgetall(self.key(job_id)) if re.fullmatch(r"[0-9a-f]{1,64}", job_id) else {}
        if not raw:
            raise NotFound(f"no job {job_id!r}")
        return _decode_record(raw)

    def list(self, team: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        ids = self.redis.zrevrange(JOB_INDEX, 0, limit - 1)
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(self.key(job_id))
        records = [_decode_record(raw) for raw in pipe.execute() if raw]
        return [r for r in records if team is None or r["team"] == team]

    def update(self, job_id: str, **fields: Any) -> None:
        encoded = {k: json.dumps(v) if isinstance(v, dict | list) else str(v) for k, v in fields.items()
                   if v is not None}
        if encoded:
            self.redis.hset(self.key(job_id), mapping=encoded)

    # One step, so that two writers cannot interleave a read and a write: a cancel racing a finish or a
    # reclaim, a worker's "running" racing a reclaim's "queued". KEYS: record, active set, events,
    # lease. ARGV: status, terminal?, event JSON, events maxlen, allowed-from (comma list, "" = any
    # non-terminal), only-if-no-lease?, started_at, then field/value pairs. Returns the status before,
    # or an error string starting with "-" when the move was refused.
    _SET_STATUS = """
    local current = redis.call('hget', KEYS[1], 'status')
    if not current then return '-missing' end
    if current == 'succeeded' or current == 'failed' or current == 'cancelled' then return '-terminal:' .. current end
    if ARGV[5] ~= '' and not string.find(',' .. ARGV[5] .. ',', ',' .. current .. ',', 1, true) then
        return '-from:' .. current
    end
    if ARGV[6] == '1' and redis.call('exists', KEYS[4]) == 1 then return '-leased' end
    if ARGV[1] == 'running' and redis.call('hexists', KEYS[1], 'started_at') == 0 then
        redis.call('hset', KEYS[1], 'started_at', ARGV[7])
    end
    redis.call('hset', KEYS[1], 'status', ARGV[1])
    for i = 8, #ARGV, 2 do redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1]) end
    if ARGV[2] == '1' then redis.call('srem', KEYS[2], string.match(KEYS[1], '[^:]+$')) end
    if current ~= ARGV[1] then
        redis.call('xadd', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'data', ARGV[3])
    end
    return current
    """

    def set_status(self, job_id: str, status: JobStatus, *, only_from: set[JobStatus] | None = None,
                   only_if_unleased: bool = False, **fields: Any) -> bool:
        """Move a job to `status` in one atomic step. A job in a terminal state stays there; with
        `only_from`, only a job in one of those states moves; with `only_if_unleased`, only a job no
        worker holds. True when the job moved (or already was in `status`)."""
        if status.terminal:
            fields.setdefault("finished_at", now_iso())
        event = {"at": now_iso(), "type": "status", "status": status.value,
                 **{k: v for k, v in fields.items() if k in ("error", "reason")}}
        pairs = [x for k, v in fields.items() if v is not None
                 for x in (k, json.dumps(v) if isinstance(v, dict | list) else str(v))]
        allowed = ",".join(sorted(s.value for s in only_from)) if only_from else ""
        key = self.key(job_id)
        outcome = self.redis.eval(self._SET_STATUS, 4, key, ACTIVE_JOBS, key + ":events", key + ":lease",
                                  status.value, "1" if status.terminal else "0", json.dumps(event), EVENTS_MAXLEN,
                                  allowed, "1" if only_if_unleased else "0", now_iso(), *pairs)
        if outcome == "-missing":
            raise NotFound(f"no job {job_id!r}")
        return not str(outcome).startswith("-")

    # -- events ------------------------------------------------------------------------------------
    def event(self, job_id: str, event: dict[str, Any]) -> str:
        payload = {"at": now_iso(), **event}
        return self.redis.xadd(self.key(job_id) + ":events", {"data": json.dumps(payload)},
                               maxlen=EVENTS_MAXLEN, approximate=True)

    def events(self, job_id: str, after: str = "-", count: int = 10_000) -> list[tuple[str, dict[str, Any]]]:
        start = "(" + after if after != "-" else "-"
        entries = self.redis.xrange(self.key(job_id) + ":events", min=start, count=count)
        return [(entry_id, json.loads(fields["data"])) for entry_id, fields in entries]

    def metrics(self, job_id: str) -> dict[str, Any]:
        """Curves for charts: steps (last value per global step) and one entry per epoch."""
        steps: dict[int, dict] = {}
        epochs: dict[int, dict] = {}
        for _, event in self.events(job_id):
            if event.get("type") == "step":
                steps[event["global_step"]] = event
            elif event.get("type") == "epoch":
                epochs[event["epoch"]] = event
        return {"id": job_id, "steps": [steps[k] for k in sorted(steps)], "epochs": [epochs[k] for k in sorted(epochs)]}

    # -- cancel ------------------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> dict[str, Any]:
        self.get(job_id)  # NotFound for an unknown id, before any key is written
        self.redis.set(self.key(job_id) + ":cancel", "1")
        # Queued and held by no worker: cancelled now (a later delivery sees the status and returns).
        # Otherwise its worker sees the flag at its next step, or the next delivery does; the flag is
        # set first, so whichever way a race with a start or a reclaim goes, the cancel is not lost.
        self.set_status(job_id, JobStatus.cancelled, only_from={JobStatus.queued}, only_if_unleased=True,
                        reason="cancelled before it started")
        return self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key(job_id) + ":cancel"))

    # -- the lease ---------------------------------------------------------------------------------
    def acquire_lease(self, job_id: str, worker: str, lease_s: float) -> bool:
        return bool(self.redis.set(self.key(job_id) + ":lease", worker, nx=True, px=int(lease_s * 1000)))

    _RENEW = """
    if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
    return 0
    """
    _RELEASE = """
    if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
    return 0
    """

    def renew_lease(self, job_id: str, worker: str, lease_s: float) -> bool:
        return bool(self.redis.eval(self._RENEW, 1, self.key(job_id) + ":lease", worker, int(lease_s * 1000)))

    def release_lease(self, job_id: str, worker: str) -> None:
        self.redis.eval(self._RELEASE, 1, self.key(job_id) + ":lease", worker)

    def lease_holder(self, job_id: str) -> str | None:
        return self.redis.get(self.key(job_id) + ":lease")

    def orphans(self) -> list[str]:
        """Active jobs that a worker started (or was handed) but whose lease has lapsed."""
        found = []
        for job_id in self.redis.smembers(ACTIVE_JOBS):
            raw = self.redis.hgetall(self.key(job_id))
            if not raw:
                self.redis.srem(ACTIVE_JOBS, job_id)
                continue
            record = _decode_record(raw)
            if JobStatus(record["status"]).terminal:
                self.redis.srem(ACTIVE_JOBS, job_id)
                continue
            if self.redis.exists(self.key(job_id) + ":lease"):
                continue
            # picked up once (it names a worker) and held by nobody now: its worker died. A job never
            # picked up, or already re-queued (worker cleared), is waiting in the broker and left alone.
            if record.get("worker"):
                found.append(job_id)
        return found

    def waiting_in_broker(self, queue: str) -> set[str]:
        """Job ids with a message waiting in the Celery queue `queue` (Redis transport: a list of JSON
        messages per priority step, whose `argsrepr` header names the job). A message a worker has taken
        is not here."""
        from shared.celery_config import queue_lists

        found: set[str] = set()
        for raw in (raw for name in queue_lists(queue) for raw in self.redis.lrange(name, 0, -1)):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                found.update(re.findall(r"[0-9a-f]{16}", json.loads(raw)["headers"]["argsrepr"]))
        return found

    def unplaced(self, queue: str) -> list[str]:
        """Active jobs that no worker holds or names and that have no message waiting: their message was
        lost (the broker send failed after the record was written, Redis lost its last second, ...).
        A job a worker is picking up this very moment looks the same: callers wait for it to stay so."""
        waiting = self.waiting_in_broker(queue)
        found = []
        for job_id in self.redis.smembers(ACTIVE_JOBS):
            raw = self.redis.hgetall(self.key(job_id))
            if not raw or JobStatus(raw.get("status", "queued")).terminal or raw.get("worker"):
                continue
            if job_id not in waiting and not self.redis.exists(self.key(job_id) + ":lease"):
                found.append(job_id)
        return found

    def claim_resend(self, job_id: str, hold_s: float) -> bool:
        """Only one worker re-sends a given lost message (and not again while that one is on its way)."""
        return bool(self.redis.set(self.key(job_id) + ":resend", "1", nx=True, px=int(hold_s * 1000)))

    def claim_reclaim(self, job_id: str, lease_s: float) -> bool:
        """Only one worker re-queues a given orphan (and not again while that message is on its way)."""
        return bool(self.redis.set(self.key(job_id) + ":reclaim", "1", nx=True, px=int(lease_s * 4000)))


def _decode_record(raw: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = dict(raw)
    record["spec"] = json.loads(raw["spec"]) if "spec" in raw else None
    for name in ("metrics", "last_checkpoint"):
        if name in raw:
            with contextlib.suppress(ValueError):
                record[name] = json.loads(raw[name])
    for name in ("starts", "epoch", "global_step", "epochs_reported", "total_steps"):
        if name in raw:
            record[name] = int(raw[name])
    if "progress" in raw:
        record["progress"] = float(raw["progress"])
    return record


def submit_job(store: JobStore, celery_app, spec: JobSpec, data_root: Path) -> dict[str, Any]:
    """Validate, record, and queue by task name. Returns the job record."""
    from shared.celery_config import NEW_JOB_PRIORITY, TRAIN_TASK

    check_spec(spec, data_root)
    record = store.create(spec)
    celery_app.send_task(TRAIN_TASK, args=[record["id"]], priority=NEW_JOB_PRIORITY)
    return record
