"""FairBatcher: per-team queues in front of the one GPU, weighted fair, dynamically batched.

Requests wait in per-team queues (interactive before bulk within a team). A
single GPU thread forms each batch: it takes the next item from the backlogged
team with the least weighted service so far (start-time fair queueing: a team's
virtual time grows by 1/weight per item served; a team that was idle re-enters at
the global virtual clock, so idle time earns no credit and past service while
others were idle is no debt). It waits up to `max_wait_s` for a batch to fill.
After a batch that carried interactive requests it lingers, at most
`interactive_linger_s`, until those teams have queued as many interactive
requests again: closed-loop interactive clients (send, wait, send) then make the
next batch instead of always missing it by their round trip.
Items whose client went away or whose deadline passed are dropped before they
reach the GPU.

Every time it reads comes from `clock` (`time.monotonic` unless a test injects one), so the
batching window and deadlines can be tested without racing the wall clock. The sizes have no
defaults here: they come from `TeacherSettings`, their one home.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import Unavailable
from shared.schemas import Priority

log = logging.getLogger("lfi.teacher.scheduler")


class QueueFull(Unavailable):
    code = "queue_full"


@dataclass
class WorkItem:
    team: str
    priority: Priority
    payload: Any  # what the runner gets (a validated engine request)
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: float  # on the batcher's clock

    def abandoned(self, now: float) -> bool:
        return self.future.done() or now > self.deadline


@dataclass
class BatchRecord:
    started: float
    seconds: float
    size: int
    teams: dict[str, int]
    backlogged: list[str]  # teams with work waiting when the batch was formed


@dataclass
class _TeamQueue:
    weight: float
    interactive: collections.deque = field(default_factory=collections.deque)
    bulk: collections.deque = field(default_factory=collections.deque)
    virtual_time: float = 0.0

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)

    def pop(self) -> WorkItem:
        return self.interactive.popleft() if self.interactive else self.bulk.popleft()


class FairBatcher:
    def __init__(
        self,
        runner: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue_per_team: int,
        interactive_linger_s: float = 0.1,
        history: int = 2048,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.clock = clock
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_per_team = max_queue_per_team
        self.interactive_linger_s = interactive_linger_s
        self._virtual_clock = 0.0
        self._linger_until = 0.0
        self._linger_for: dict[str, int] = {}
        self._queues: dict[str, _TeamQueue] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches: collections.deque[BatchRecord] = collections.deque(maxlen=history)
        self.dropped = 0
        self.busy_seconds = 0.0
        self.started_at = clock()
        self._avg_batch_s = 0.5
        self.on_batch: Callable[[BatchRecord], None] | None = None

    # -- producer side (event loop) ---------------------------------------------------------------

    def submit(self, team: str, weight: float, priority: Priority, payload: Any, timeout_s: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        item = WorkItem(team, priority, payload, future, loop, self.clock() + timeout_s)
        with self._cond:
            queue = self._queues.get(team)
            if queue is None:
                queue = self._queues[team] = _TeamQueue(weight=weight)
            if len(queue) >= self.max_queue_per_team:
                raise QueueFull(
                    f"team {team!r} has {len(queue)} requests queued (limit {self.max_queue_per_team}); retry later",
                    retry_after_s=self.estimated_wait_s(len(queue)),
                )
            if len(queue) == 0:
                # Re-entering teams start at the clock: idle time earns no credit.
                queue.virtual_time = max(queue.virtual_time, self._virtual_clock)
            queue.weight = weight
            (queue.interactive if priority is Priority.interactive else queue.bulk).append(item)
            self._cond.notify()
        return future

    def estimated_wait_s(self, depth: int) -> float:
        return max(1.0, depth / max(1, self.max_batch_size) * self._avg_batch_s)

    def depths(self) -> dict[str, dict[str, int]]:
        with self._cond:
            return {team: {"interactive": len(q.interactive), "bulk": len(q.bulk)} for team, q in self._queues.items()}

    def busy_fraction(self, window_s: float = 60.0) -> float:
        now = self.clock()
        start = max(self.started_at, now - window_s)
        busy = sum(min(b.seconds, b.started + b.seconds - start) for b in list(self.batches)
                   if b.started + b.seconds > start)
        return min(1.0, busy / max(1e-9, now - start))

    # -- GPU thread ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lfi-gpu", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._cond:  # nobody will serve what is still queued: say so instead of leaving it hanging
            for queue in self._queues.values():
                while len(queue):
                    item = queue.pop()
                    item.loop.call_soon_threadsafe(_fail, item.future, RuntimeError("the teacher is shutting down"))

    def _awaiting_interactive(self) -> bool:
        return any(team not in self._queues or len(self._queues[team].interactive) < n
                   for team, n in self._linger_for.items())

    def _pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _take_one(self, now: float) -> WorkItem | None:
        """Next live item in fair order, dropping abandoned ones on the way."""
        while True:
            backlogged = [(q.virtual_time, team) for team, q in self._queues.items() if len(q)]
            if not backlogged:
                return None
            _, team = min(backlogged)
            queue = self._queues[team]
            item = queue.pop()
            if item.abandoned(now):
                self.dropped += 1
                if not item.future.done():
                    item.loop.call_soon_threadsafe(_fail, item.future, TimeoutError("deadline passed in queue"))
                continue
            self._virtual_clock = max(self._virtual_clock, queue.virtual_time)
            queue.virtual_time += 1.0 / queue.weight
            return item

    def _form_batch(self) -> tuple[list[WorkItem], list[str]] | None:
        with self._cond:
            while not self._stopping and self._pending() == 0:
                self._cond.wait(timeout=0.5)
            while not self._stopping and self.clock() < self._linger_until and self._awaiting_interactive():
                self._cond.wait(timeout=self._linger_until - self.clock())
            if self._stopping:
                return None
            backlogged = sorted(team for team, q in self._queues.items() if len(q))
            batch: list[WorkItem] = []
            deadline = self.clock() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                item = self._take_one(self.clock())
                if item is not None:
                    batch.append(item)
                    continue
                remaining = deadline - self.clock()
                if remaining <= 0 or self._stopping:
                    break
                self._cond.wait(timeout=remaining)
            return batch, backlogged

    def _loop(self) -> None:
        while True:
            formed = self._form_batch()
            if formed is None:
                return
            batch, backlogged = formed
            if not batch:
                continue
            started = self.clock()
            outcome = self._run(batch)
            seconds = self.clock() - started
            interactive = collections.Counter(item.team for item in batch if item.priority is Priority.interactive)
            with self._cond:
                self._linger_for = dict(interactive)
                self._linger_until = self.clock() + self.interactive_linger_s if interactive else 0.0
            self.busy_seconds += seconds
            self._avg_batch_s = 0.8 * self._avg_batch_s + 0.2 * seconds
            counts = collections.Counter(item.team for item in batch)
            record = BatchRecord(started, seconds, len(batch), dict(counts), backlogged)
            self.batches.append(record)
            if self.on_batch is not None:
                try:
                    self.on_batch(record)
                except Exception:  # metrics must never stop the GPU thread
                    log.exception("on_batch hook failed")
            for item, result, error in outcome:
                if error is None:
                    item.loop.call_soon_threadsafe(_resolve, item.future, result)
                else:
                    item.loop.call_soon_threadsafe(_fail, item.future, error)

    def _run(self, batch: list[WorkItem]) -> list[tuple[WorkItem, Any, BaseException | None]]:
        """Run a batch; if it fails, run its items one by one so one bad item fails only itself."""
        try:
            results = self.runner([item.payload for item in batch])
            return [(item, result, None) for item, result in zip(batch, results, strict=True)]
        except Exception as exc:
            if len(batch) == 1:
                log.warning("request failed in the engine: %s", exc)
                return [(batch[0], None, exc)]
            log.warning("batch of %d failed (%s); retrying its items one at a time", len(batch), exc)
        return [outcome for item in batch for outcome in self._run([item])]


def _resolve(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
