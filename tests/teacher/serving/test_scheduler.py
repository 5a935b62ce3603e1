"""FairBatcher on its own: weights, priorities, dynamic batching, abandoned items (no HTTP)."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.teacher.serving.scheduler import FairBatcher, QueueFull
from shared.schemas import Priority


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
    batcher = FairBatcher(lambda payloads: payloads, max_batch_size=6, max_wait_s=0)
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

    batcher = FairBatcher(runner, max_batch_size=2, max_wait_s=0, interactive_linger_s=0)
    submissions = [("a", 1.0, Priority.bulk, f"bulk{i}") for i in range(4)]
    submissions += [("a", 1.0, Priority.interactive, f"now{i}") for i in range(2)]
    _run(batcher, submissions)
    assert order[:2] == ["now0", "now1"]


def test_dynamic_batching_waits_for_a_batch_to_fill():
    batcher = FairBatcher(lambda payloads: payloads, max_batch_size=4, max_wait_s=0.2)

    async def main():
        batcher.start()
        try:
            first = batcher.submit("a", 1.0, Priority.bulk, 1, 10)
            await asyncio.sleep(0.05)
            rest = [batcher.submit("a", 1.0, Priority.bulk, i, 10) for i in (2, 3, 4)]
            return await asyncio.gather(first, *rest)
        finally:
            batcher.stop()

    assert asyncio.run(main()) == [1, 2, 3, 4]
    assert [b.size for b in batcher.batches] == [4]


def test_full_queue_and_expired_items():
    batcher = FairBatcher(lambda payloads: payloads, max_queue_per_team=2)

    async def main():
        batcher.submit("a", 1.0, Priority.bulk, 1, 10)
        expired = batcher.submit("a", 1.0, Priority.bulk, 2, 0.0)
        with pytest.raises(QueueFull) as full:
            batcher.submit("a", 1.0, Priority.bulk, 3, 10)
        assert full.value.retry_after_s >= 1
        time.sleep(0.01)
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

    results = _run(FairBatcher(broken, max_batch_size=4, max_wait_s=0),
                   [("a", 1.0, Priority.bulk, i) for i in range(3)])
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results)


def test_one_bad_item_fails_only_itself():
    def runner(payloads):
        if "bad" in payloads:
            raise ValueError("cannot do 'bad'")
        return [p.upper() for p in payloads]

    results = _run(FairBatcher(runner, max_batch_size=4, max_wait_s=0),
                   [("a", 1.0, Priority.bulk, p) for p in ("x", "bad", "y")])
    assert results[0] == "X" and results[2] == "Y"
    assert isinstance(results[1], ValueError)


def test_stop_fails_what_is_still_queued():
    batcher = FairBatcher(lambda payloads: payloads)

    async def main():
        future = batcher.submit("a", 1.0, Priority.bulk, 1, 10)
        batcher.stop()  # never started: the item can only be failed
        with pytest.raises(RuntimeError, match="shutting down"):
            await future

    asyncio.run(main())
