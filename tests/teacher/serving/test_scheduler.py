"""FairBatcher on its own: weights, priorities, dynamic batching, abandoned items (no HTTP).

Where a test is about time (the batching window, deadlines) the batcher runs on a `FakeClock`
that only the test moves, so the outcome does not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.teacher.serving.scheduler import FairBatcher, QueueFull
from services.teacher.settings import TeacherSettings
from shared.schemas import Priority

DEFAULTS = TeacherSettings.defaults()


class FakeClock:
    """A monotonic clock that stands still until `advance` is called."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def _batcher(runner, **overrides) -> FairBatcher:
    """A batcher with the serving defaults unless a test says otherwise."""
    options = {"max_batch_size": DEFAULTS.max_batch_size, "max_wait_s": DEFAULTS.max_wait_ms / 1000,
               "max_queue_per_team": DEFAULTS.max_queue_per_team, **overrides}
    return FairBatcher(runner, **options)


def _echo(payloads):
    return payloads


def _run(batcher: FairBatcher, submissions, timeout_s: float = 30.0):
    async def main():
        futures = [batcher.submit(team, weight, priority, payload, timeout_s)
                   for team, weight, priority, payload in submissions]
        batcher.start()
        try:
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            batcher.stop()

    return asyncio.run(main())


def test_weights_share_the_slots_while_both_are_backlogged():
    batcher = _batcher(_echo, max_batch_size=6, max_wait_s=0)
    submissions = [("a", 2.0, Priority.bulk, f"a{i}") for i in range(60)]
    submissions += [("b", 1.0, Priority.bulk, f"b{i}") for i in range(60)]
    results = _run(batcher, submissions)
    assert sorted(results) == sorted(p for *_, p in submissions)
    contested = [b for b in batcher.batches if set(b.backlogged) == {"a", "b"}]
    a = sum(b.teams.get("a", 0) for b in contested)
    total = sum(b.size for b in contested)
    assert abs(a / total - 2 / 3) < 0.05


def test_interactive_goes_before_bulk_within_a_team():
    order: list[str] = []

    def runner(payloads):
        order.extend(payloads)
        return payloads

    batcher = _batcher(runner, max_batch_size=2, max_wait_s=0, interactive_linger_s=0)
    submissions = [("a", 1.0, Priority.bulk, f"bulk{i}") for i in range(4)]
    submissions += [("a", 1.0, Priority.interactive, f"now{i}") for i in range(2)]
    _run(batcher, submissions)
    assert order[:2] == ["now0", "now1"]


def test_dynamic_batching_waits_for_a_batch_to_fill():
    clock = FakeClock()  # stands still: the 0.2 s window cannot close, however slow this machine is
    batcher = _batcher(_echo, max_batch_size=4, max_wait_s=0.2, clock=clock)

    async def main():
        batcher.start()
        try:
            first = batcher.submit("a", 1.0, Priority.bulk, 1, 10)
            await asyncio.sleep(0.05)  # real time passes; the batcher's window does not
            clock.advance(0.1)  # half the window
            rest = [batcher.submit("a", 1.0, Priority.bulk, i, 10) for i in (2, 3, 4)]
            return await asyncio.gather(first, *rest)
        finally:
            batcher.stop()

    assert asyncio.run(main()) == [1, 2, 3, 4]
    assert [b.size for b in batcher.batches] == [4]


def test_a_partial_batch_leaves_when_its_window_closes():
    clock = FakeClock()
    batcher = _batcher(_echo, max_batch_size=4, max_wait_s=0.2, clock=clock)

    async def main():
        batcher.start()
        try:
            lone = batcher.submit("a", 1.0, Priority.bulk, 1, 10)
            await asyncio.sleep(0.05)
            assert not lone.done()  # the clock stands still: the window is open
            clock.advance(0.25)  # the batcher notices at its next wake-up (at most the window, in real time)
            return await asyncio.wait_for(lone, 10)
        finally:
            batcher.stop()

    assert asyncio.run(main()) == 1
    assert [b.size for b in batcher.batches] == [1]


def test_full_queue_and_expired_items():
    clock = FakeClock()
    batcher = _batcher(_echo, max_queue_per_team=2, clock=clock)

    async def main():
        batcher.submit("a", 1.0, Priority.bulk, 1, 10)
        expired = batcher.submit("a", 1.0, Priority.bulk, 2, 0.0)
        with pytest.raises(QueueFull) as full:
            batcher.submit("a", 1.0, Priority.bulk, 3, 10)
        assert full.value.retry_after_s >= 1
        clock.advance(1.0)  # past the second item's deadline, not the first's
        batcher.start()
        try:
            with pytest.raises(TimeoutError):
                await expired
        finally:
            batcher.stop()

    asyncio.run(main())
    assert batcher.dropped == 1


def test_an_engine_failure_reaches_every_caller_of_the_batch():
    def broken(payloads):
        raise RuntimeError("CUDA out of memory")

    results = _run(_batcher(broken, max_batch_size=4, max_wait_s=0), [("a", 1.0, Priority.bulk, i) for i in range(3)])
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results)


def test_one_bad_item_fails_only_itself():
    def runner(payloads):
        if "bad" in payloads:
            raise ValueError("cannot do 'bad'")
        return [p.upper() for p in payloads]

    results = _run(_batcher(runner, max_batch_size=4, max_wait_s=0),
                   [("a", 1.0, Priority.bulk, p) for p in ("x", "bad", "y")])
    assert results[0] == "X" and results[2] == "Y"
    assert isinstance(results[1], ValueError)


def test_stop_fails_what_is_still_queued():
    batcher = _batcher(_echo)

    async def main():
        future = batcher.submit("a", 1.0, Priority.bulk, 1, 10)
        batcher.stop()  # never started: the item can only be failed
        with pytest.raises(RuntimeError, match="shutting down"):
            await future

    asyncio.run(main())


def test_busy_fraction_and_batch_times_follow_the_injected_clock():
    clock = FakeClock()

    def slow(payloads):
        clock.advance(3.0)  # the "GPU" takes 3 s of the batcher's time
        return payloads

    batcher = _batcher(slow, max_wait_s=0, clock=clock)
    clock.advance(3.0)
    _run(batcher, [("a", 1.0, Priority.bulk, 1)])
    assert [b.seconds for b in batcher.batches] == [3.0]
    assert batcher.busy_fraction() == pytest.approx(0.5)  # 3 s busy of the 6 s since it was made
