"""Per-team request rate (token bucket, per replica) and daily map quota (shared in Redis)."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict

from redis.exceptions import RedisError

from services.teacher.serving.cache import MapCache
from shared.errors import RateLimited
from shared.teams import Team


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: float | None = None) -> None:
        self.rate = rate_per_s
        self.capacity = burst if burst is not None else max(1.0, rate_per_s)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self, n: float = 1.0) -> float:
        """0 when allowed, else the seconds until `n` tokens are there."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


def _seconds_to_utc_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


class TeamLimits:
    def __init__(self, cache: MapCache) -> None:
        self.cache = cache
        self.buckets: dict[str, TokenBucket] = {}
        self.local_usage: dict[tuple[str, str], int] = defaultdict(int)  # fallback while Redis is down

    def check_rate(self, team: Team, n: int = 1) -> None:
        bucket = self.buckets.get(team.name)
        if bucket is None or bucket.rate != team.rate_per_s:
            bucket = self.buckets[team.name] = TokenBucket(team.rate_per_s, max(float(n), team.rate_per_s))
        wait = bucket.take(n)
        if wait > 0:
            raise RateLimited(f"team {team.name!r} is over {team.rate_per_s} requests/s", retry_after_s=wait)

    async def reserve_maps(self, team: Team, n: int = 1) -> tuple[str, str, int]:
        """Count `n` computed maps against today's quota, or refuse with 429 until UTC midnight.

        Returns the reservation, to give back with `release_maps` if the maps are not computed.
        """
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        reservation = (team.name, day, n)
        redis_key = f"lfi:quota:{team.name}:{day}"
        used = None
        if self.cache.available:
            try:
                async with self.cache.redis.pipeline(transaction=True) as pipe:
                    used, _ = await pipe.incrby(redis_key, n).expire(redis_key, 2 * 86400).execute()
            except (RedisError, OSError) as exc:
                self.cache._down(exc)
                used = None
        if used is None:
            self.local_usage[(team.name, day)] += n
            used = self.local_usage[(team.name, day)]
        if used > team.daily_quota:
            await self.release_maps(reservation)
            raise RateLimited(f"team {team.name!r} used its daily quota of {team.daily_quota} maps",
                              retry_after_s=_seconds_to_utc_midnight(), code="quota_exceeded")
        return reservation

    async def release_maps(self, reservation: tuple[str, str, int]) -> None:
        team, day, n = reservation
        if self.cache.available:
            try:
                await self.cache.redis.decrby(f"lfi:quota:{team}:{day}", n)
                return
            except (RedisError, OSError) as exc:
                self.cache._down(exc)
        self.local_usage[(team, day)] -= n

    async def usage(self, team: str) -> int:
        day = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
        if self.cache.available:
            try:
                value = await self.cache.redis.get(f"lfi:quota:{team}:{day}")
                return int(value or 0)
            except (RedisError, OSError) as exc:
                self.cache._down(exc)
        return self.local_usage[(team, day)]
