"""MapCache: computed maps in Redis, single-flight across replicas, alive without Redis.

Values are the response JSON (orjson bytes) under `lfi:map:<key>`. A miss takes
a lock `lfi:lock:<key>` (SET NX PX) before computing, so identical requests in
flight on several teacher replicas are computed once; the others wait for the
value to appear (or for the lock to vanish, and then try themselves). Within one
replica, identical requests also share one in-process future.

Values never change for a key (it hashes every input), so each replica also
keeps the most recent ones in a bounded in-process LRU: a hot map costs no
Redis round trip.

When Redis fails, the cache turns *degraded*: requests are served uncached,
`/readyz` says why, and a probe every `retry_s` brings it back by itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.keys import MAP_KEY_PREFIX

log = logging.getLogger("lfi.teacher.cache")
LOCK_PREFIX = "lfi:lock:"


class MapCache:
    def __init__(self, url: str, *, ttl_s: int | None = None, lock_ttl_s: float = 120.0, retry_s: float = 1.0,
                 timeout_s: float = 0.5, local_bytes: int = 64 * 1024 * 1024) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.retry_s = retry_s
        self.replica = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                       retry_on_timeout=False)
        self.degraded_reason: str | None = None
        self._next_probe = 0.0
        self.hits = 0
        self.misses = 0
        self._local: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._local_bytes = 0
        self.local_limit = local_bytes

    def _remember(self, key: str, value: bytes) -> None:
        if key in self._local:
            self._local.move_to_end(key)
            return
        self._local[key] = value
        self._local_bytes += len(value)
        while self._local_bytes > self.local_limit and self._local:
            _, dropped = self._local.popitem(last=False)
            self._local_bytes -= len(dropped)

    def _recall(self, key: str) -> bytes | None:
        value = self._local.get(key)
        if value is not None:
            self._local.move_to_end(key)
            self.hits += 1
        return value

    @property
    def available(self) -> bool:
        return self.degraded_reason is None

    def _down(self, exc: Exception) -> None:
        if self.degraded_reason is None:
            log.warning("redis unavailable, serving uncached: %s", exc)
        self.degraded_reason = f"redis unavailable: {exc.__class__.__name__}: {exc}"
        self._next_probe = time.monotonic() + self.retry_s

    async def _usable(self) -> bool:
        if self.degraded_reason is None:
            return True
        if time.monotonic() < self._next_probe:
            return False
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            self._down(exc)
            return False
        log.info("redis is back; caching resumes")
        self.degraded_reason = None
        return True

    async def ping(self) -> bool:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            self._down(exc)
            return False
        self.degraded_reason = None
        return True

    async def get(self, key: str) -> bytes | None:
        local = self._recall(key)
        if local is not None:
            return local
        if not await self._usable():
            return None
        try:
            value = await self.redis.get(MAP_KEY_PREFIX + key)
        except (RedisError, OSError) as exc:
            self._down(exc)
            return None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
            self._remember(key, value)
        return value

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        values: list[bytes | None] = [self._recall(k) for k in keys]
        missing = [i for i, v in enumerate(values) if v is None]
        if not missing or not await self._usable():
            self.misses += len(missing)
            return values
        try:
            fetched = await self.redis.mget([MAP_KEY_PREFIX + keys[i] for i in missing])
        except (RedisError, OSError) as exc:
            self._down(exc)
            self.misses += len(missing)
            return values
        for i, value in zip(missing, fetched, strict=True):
            values[i] = value
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._remember(keys[i], value)
        return values

    async def put(self, key: str, value: bytes) -> None:
        self._remember(key, value)
        if not await self._usable():
            return
        try:
            await self.redis.set(MAP_KEY_PREFIX + key, value, ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            self._down(exc)

    async def try_lock(self, key: str) -> bool:
        """True when this replica should compute `key`. Without Redis, always True (local single-flight only)."""
        if not await self._usable():
            return True
        try:
            return bool(await self.redis.set(LOCK_PREFIX + key, self.replica, nx=True, px=self.lock_ttl_ms))
        except (RedisError, OSError) as exc:
            self._down(exc)
            return True

    async def unlock(self, key: str) -> None:
        if not self.available:
            return
        try:
            # Only our own lock: compare-and-delete in one step.
            await self.redis.eval(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
                1, LOCK_PREFIX + key, self.replica,
            )
        except (RedisError, OSError) as exc:
            self._down(exc)

    async def wait_for_other(self, key: str, timeout_s: float, poll_s: float = 0.02) -> bytes | None:
        """Wait for another replica's result; None when its lock vanished without one (it died) or on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await self._usable():
                return None
            try:
                value, locked = await asyncio.gather(self.redis.get(MAP_KEY_PREFIX + key),
                                                     self.redis.exists(LOCK_PREFIX + key))
            except (RedisError, OSError) as exc:
                self._down(exc)
                return None
            if value is not None:
                self.hits += 1
                self._remember(key, value)
                return value
            if not locked:
                return None
            await asyncio.sleep(poll_s)
        return None

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()
