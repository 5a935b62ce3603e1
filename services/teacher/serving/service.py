"""TeacherService: cache, single-flight, quotas and the fair batcher around the engine.

Plain Python over asyncio; the FastAPI routes only parse and call this.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import orjson

from services.teacher.engine.extraction import InteractionEngine, InteractionRequest, InteractionResult, ValidRequest
from services.teacher.engine.prompts import DEFAULT_TEMPLATE, TEMPLATES, PromptTemplate
from services.teacher.serving.cache import MapCache
from services.teacher.serving.limits import TeamLimits
from services.teacher.serving.metrics import TeacherMetrics
from services.teacher.serving.payloads import as_cached, result_json
from services.teacher.serving.scheduler import FairBatcher
from shared.errors import EngineFailed, LfiError, NotFound, Unavailable
from shared.keys import KEY_SCHEMA_VERSION, map_key, pixel_digest
from shared.schemas import InteractionRequestBody, Priority
from shared.teams import Team

log = logging.getLogger("lfi.teacher.service")


class ClientGone(Exception):
    """The caller disconnected while waiting; nothing to answer."""


class TeacherService:
    def __init__(self, engine: InteractionEngine, cache: MapCache, batcher: FairBatcher, limits: TeamLimits,
                 metrics: TeacherMetrics, *, request_timeout_s: float) -> None:
        self.engine = engine
        self.cache = cache
        self.batcher = batcher
        self.limits = limits
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self._inflight: dict[str, asyncio.Future] = {}
        # sha256 of a request's raw JSON body -> its map key (bounded LRU): repeat requests skip decoding.
        self.raw_keys: collections.OrderedDict[bytes, str] = collections.OrderedDict()
        self.raw_keys_max = 100_000

    # -- what clients need to compute keys themselves ---------------------------------------------

    def info(self) -> dict:
        identity = self.engine.vlm.identity
        return {
            "model": {"id": identity.id, "revision": identity.revision},
            "extraction": self.engine.key_settings(),
            "prompts": {t.id: t.version for t in TEMPLATES.values()},
            "default_prompts": {task.value: prompt for task, prompt in DEFAULT_TEMPLATE.items()},
            "key_schema": KEY_SCHEMA_VERSION,
            "grid": self.engine.grid_side,
        }

    def _key(self, clean: ValidRequest, template: PromptTemplate) -> str:
        identity = self.engine.vlm.identity
        return map_key(
            pixels=pixel_digest(clean.image), task=clean.task.value, label=clean.label,
            vocabulary=clean.vocabulary, boxes=[b.model_dump() for b in clean.boxes], prompt=template.id,
            prompt_version=template.version, grid=clean.grid, per_instance=clean.per_instance,
            return_layers=clean.return_layers, extraction=self.engine.key_settings(),
            model_id=identity.id, model_revision=identity.revision, background=clean.background,
            system_prompt=clean.system_prompt,
        )

    def prepare(self, body: InteractionRequestBody, image_bytes: bytes) -> tuple[str, ValidRequest]:
        """Decode, validate and key a request (CPU work: run it off the event loop)."""
        request = InteractionRequest(
            image=image_bytes, task=body.task, label=body.label, vocabulary=body.vocabulary, boxes=body.boxes,
            background=body.background, prompt=body.prompt, grid=body.grid, per_instance=body.per_instance,
            return_layers=body.return_layers, system_prompt=body.system_prompt,
        )
        clean, _, template = self.engine.validate(request)
        return self._key(clean, template), clean

    def remember_raw(self, fingerprint: bytes, key: str) -> None:
        self.raw_keys[fingerprint] = key
        self.raw_keys.move_to_end(fingerprint)
        if len(self.raw_keys) > self.raw_keys_max:
            self.raw_keys.popitem(last=False)

    # -- the request path -----------------------------------------------------------------------------

    async def lookup(self, key: str) -> bytes:
        value = await self.cache.get(key)
        self.metrics.cache.labels("hit" if value is not None else "miss").inc()
        if value is None:
            raise NotFound(f"no map cached under key {key}")
        return as_cached(value)

    async def lookup_many(self, keys: list[str]) -> list[bytes | None]:
        values = await self.cache.get_many(keys)
        for value in values:
            self.metrics.cache.labels("hit" if value is not None else "miss").inc()
        return [as_cached(v) if v is not None else None for v in values]

    async def interact(
        self, team: Team, priority: Priority, key: str, request: InteractionRequest,
        gone: asyncio.Future | None = None,
    ) -> bytes:
        """The response JSON for one prepared request: from the cache, a sibling in flight, or the GPU.

        `gone` completes when the client disconnects (one watcher per HTTP request, no polling).
        """
        while True:
            stored = await self.cache.get(key)
            if stored is not None:
                self.metrics.cache.labels("hit").inc()
                return as_cached(stored)
            local = self._inflight.get(key)
            if local is None:
                break
            # Same replica, same key: share the one computation. Only its result or an engine
            # failure is shared; the first caller's own trouble (it left, its team's quota, its
            # queue) is not ours, so we then try ourselves.
            try:
                return as_cached(await asyncio.shield(local))
            except BaseException:
                if not local.done():
                    raise  # we were cancelled ourselves
                if not local.cancelled() and isinstance(local.exception(), EngineFailed):
                    raise
        self.metrics.cache.labels("miss").inc()
        mine = asyncio.get_running_loop().create_future()
        self._inflight[key] = mine
        try:
            value = await self._compute_once(team, priority, key, request, gone)
            mine.set_result(value)
            return value
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                mine.cancel()
            else:
                mine.set_exception(exc)
                mine.exception()  # mark retrieved: a waiting sibling may not exist
            raise
        finally:
            self._inflight.pop(key, None)

    async def _compute_once(self, team: Team, priority: Priority, key: str, request: InteractionRequest,
                            gone: asyncio.Future | None) -> bytes:
        deadline = loop_time() + self.request_timeout_s
        while True:
            if await self.cache.try_lock(key):
                try:
                    # Another replica may have finished between our miss and our lock.
                    stored = await self.cache.get(key)
                    if stored is not None:
                        return as_cached(stored)
                    return await self._compute(team, priority, key, request, gone, deadline)
                finally:
                    await self.cache.unlock(key)
            # Another replica computes it: wait for its value, or for its lock to vanish.
            value = await self.cache.wait_for_other(key, max(0.0, deadline - loop_time()))
            if value is not None:
                return as_cached(value)
            if loop_time() >= deadline:
                raise Unavailable(f"map {key} was not computed within {self.request_timeout_s:.0f} s",
                                  code="timeout", retry_after_s=1.0)

    async def _compute(self, team: Team, priority: Priority, key: str, request: InteractionRequest,
                       gone: asyncio.Future | None, deadline: float) -> bytes:
        reservation = await self.limits.reserve_maps(team)
        try:
            future = self.batcher.submit(team.name, team.weight, priority, request, max(0.0, deadline - loop_time()))
            result = await _wait(future, gone, deadline)
        except (ClientGone, asyncio.CancelledError):  # gone, or cut off by shutdown: no map, no charge
            await self.limits.release_maps(reservation)
            raise
        except TimeoutError as exc:
            await self.limits.release_maps(reservation)
            raise Unavailable(f"request not served before its deadline ({exc})", code="timeout",
                              retry_after_s=self.batcher.estimated_wait_s(10)) from None
        except LfiError:
            await self.limits.release_maps(reservation)
            raise
        except Exception as exc:
            await self.limits.release_maps(reservation)
            raise EngineFailed(f"the model failed on this batch: {exc.__class__.__name__}: {exc}") from exc
        self.metrics.maps_computed.labels(team.name).inc()
        value = result_json(result, key)
        await self.cache.put(key, value)
        return value


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def _wait(future: asyncio.Future, gone: asyncio.Future | None, deadline: float) -> InteractionResult:
    """Await the batcher's future unless the client disconnects or the deadline passes first."""
    waiting = {future} if gone is None else {future, gone}
    try:
        await asyncio.wait(waiting, timeout=max(0.0, deadline - loop_time()), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        future.cancel()
        raise
    if future.done():
        return future.result()
    future.cancel()  # the batcher drops a cancelled item before the GPU
    if gone is not None and gone.done():
        raise ClientGone()
    raise TimeoutError("deadline passed")


def error_json(exc: LfiError) -> bytes:
    return orjson.dumps(exc.to_dict())
