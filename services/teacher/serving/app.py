"""The teacher's REST layer: parse, authenticate, call TeacherService, map errors. Nothing else."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.teacher.engine.extraction import ExtractionSettings, InteractionEngine
from services.teacher.serving.cache import MapCache
from services.teacher.serving.limits import TeamLimits
from services.teacher.serving.metrics import TeacherMetrics
from services.teacher.serving.payloads import as_cached
from services.teacher.serving.scheduler import FairBatcher
from services.teacher.serving.service import ClientGone, TeacherService, error_json
from shared.codec import BINARY_MEDIA_TYPE, pack_batch
from shared.errors import (
    BodyTooLarge,
    InvalidImage,
    InvalidRequest,
    LfiError,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from shared.schemas import (
    BatchRequestBody,
    BatchResponseBody,
    ErrorBody,
    InteractionRequestBody,
    InteractionResponse,
)
from shared.teams import Team, TeamDirectory

log = logging.getLogger("lfi.teacher.app")


@dataclass
class TeacherConfig:
    model: str
    redis_url: str
    teams: TeamDirectory
    dtype: str = "float32"
    device: str = "cpu"
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue_per_team: int = 1024
    max_body_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 120.0
    extraction: ExtractionSettings | None = None
    answer_backend: str = "transformers"
    max_pixels: int = 40_000_000
    map_ttl_s: int | None = 30 * 86400  # maps expire, so Redis' volatile-lru can evict them (and only them)


def _json(body: bytes, status: int = 200, headers: dict | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error_response(exc: LfiError) -> Response:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return _json(error_json(exc), exc.status, headers)


class BodyLimit:
    """Refuses bodies over the limit before reading them (Content-Length) or while reading (chunked)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_large = BodyTooLarge(f"request body over the {self.max_bytes} byte limit; send fewer or smaller images")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _error_response(too_large)(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        try:
            return await self.app(scope, limited_receive, send)
        except BodyTooLarge as exc:
            return await _error_response(exc)(scope, receive, send)


class Observe:
    """Request count and latency per route, team and status (plain ASGI: no per-request task overhead)."""

    def __init__(self, app, metrics: TeacherMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            path = scope.get("lfi_route") or getattr(scope.get("route"), "path", "unmatched")
            team = (scope.get("state") or {}).get("team", "-")
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
            self.metrics.requests.labels(team, path, str(status)).inc()


FAST_PATH_MAX_BYTES = 4 * 1024 * 1024  # larger bodies are rarely repeats; hashing them would stall the loop


class CachedFastPath:
    """Repeat requests served below the framework: the hot path of a busy shared teacher.

    A POST /interactions whose exact JSON bytes were answered before (their
    sha256 is remembered with the map key) is authenticated, rate-limited and
    answered with one Redis GET, without routing, validation or decoding.
    Everything else (unknown bytes, bad keys, misses) goes to FastAPI with the
    body replayed, so errors and semantics stay those of the routes.
    """

    def __init__(self, app, state: dict, teams: TeamDirectory, metrics: TeacherMetrics) -> None:
        self.app = app
        self.state = state
        self.teams = teams
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        svc = self.state.get("service")
        if svc is None or scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/interactions":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            return await self.app(scope, receive, send)
        # Authenticate from the headers before reading anything: no body is held for strangers.
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        team = self.teams.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        length = headers.get(b"content-length", b"")
        if team is None or not length.isdigit() or int(length) > FAST_PATH_MAX_BYTES:
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client gone
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        key = svc.raw_keys.get(hashlib.sha256(body).digest())
        stored = await svc.cache.get(key) if key is not None else None
        if stored is None:
            return await self.app(scope, replay, send)
        scope.setdefault("state", {})["team"] = team.name
        scope["lfi_route"] = "/interactions"
        try:
            svc.limits.check_rate(team)
        except RateLimited as exc:
            return await _error_response(exc)(scope, replay, send)
        self.metrics.cache.labels("hit").inc()
        await _json(as_cached(stored))(scope, replay, send)


def create_app(config: TeacherConfig) -> FastAPI:
    metrics = TeacherMetrics()
    state: dict = {"service": None, "loading_error": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        cache = MapCache(config.redis_url, ttl_s=config.map_ttl_s)
        await cache.ping()
        limits = TeamLimits(cache)

        def load() -> InteractionEngine:
            return InteractionEngine.from_pretrained(
                config.model, dtype=config.dtype, device=config.device, settings=config.extraction,
                max_batch_size=config.max_batch_size, answer_backend=config.answer_backend,
                max_pixels=config.max_pixels,
            )

        try:
            engine = await asyncio.to_thread(load)
        except LfiError as exc:  # a clear message, no traceback: the user fixes the model reference
            state["loading_error"] = exc.message
            log.error("model failed to load: %s", exc.message)
            raise SystemExit(2) from None
        except Exception as exc:
            state["loading_error"] = f"{exc.__class__.__name__}: {exc}"
            log.exception("model failed to load")
            raise
        batcher = FairBatcher(engine.extract_batch, max_batch_size=config.max_batch_size,
                              max_wait_s=config.max_wait_ms / 1000, max_queue_per_team=config.max_queue_per_team)

        def on_batch(record) -> None:
            metrics.batch_size.observe(record.size)
            metrics.batch_seconds.observe(record.seconds)

        batcher.on_batch = on_batch
        batcher.start()
        state["service"] = TeacherService(engine, cache, batcher, limits, metrics,
                                          request_timeout_s=config.request_timeout_s)
        log.info("teacher ready: %s", engine.vlm.identity)
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.stop)
            await cache.close()

    app = FastAPI(title="lfi teacher", version="1", lifespan=lifespan,
                  description="Interaction maps C_VLM from LLaVA-1.5. See docs/api.md.")

    def service() -> TeacherService:
        svc = state["service"]
        if svc is None:
            raise Unavailable("the model is still loading", code="loading", retry_after_s=5)
        return svc

    async def authenticate(request: Request) -> Team:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing 'Authorization: Bearer <team key>' header")
        team = config.teams.authenticate(token.strip())
        if team is None:
            raise Unauthorized("unknown team key")
        return team

    @app.exception_handler(LfiError)
    async def lfi_error(request: Request, exc: LfiError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Framework errors in the contract's shape; a body cut off by BodyLimit stays a 413.
        if isinstance(exc.__cause__, LfiError):
            return _error_response(exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _error_response(LfiError(str(exc.detail), code=code, status=exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error_response(InvalidRequest(_describe(exc.errors())))

    async def parse_single(request: Request) -> tuple[InteractionRequestBody, bytes]:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise InvalidRequest("multipart requests need a file field 'image'")
            fields = form.get("request") or "{}"
            try:
                body = InteractionRequestBody.model_validate_json(fields if isinstance(fields, str) else "{}")
            except ValidationError as exc:
                raise InvalidRequest(_describe(exc.errors())) from None
            return body, await upload.read()
        if not content_type.startswith("application/json"):
            raise LfiError("send application/json (base64 image) or multipart/form-data (file 'image')",
                           code="unsupported_media_type", status=415)
        raw = await request.body()
        return _parse_json(raw)

    def _parse_json(raw: bytes) -> tuple[InteractionRequestBody, bytes]:
        try:
            body = InteractionRequestBody.model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidRequest(_describe(exc.errors())) from None
        if body.image is None:
            raise InvalidRequest("'image' (base64) is required; for a look-up by key use GET /interactions/{key}")
        return body, _b64(body.image)

    open_request = {"requestBody": {"required": True, "content": {
        "application/json": {
            "schema": InteractionRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "request": {"type": "string", "description": "JSON of the other request fields"}}}},
    }}}
    error_responses = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 429, 503)}

    @app.post("/interactions", response_model=InteractionResponse, openapi_extra=open_request,
              responses=error_responses)
    async def interactions(request: Request, team: Team = Depends(authenticate)):
        request.state.team = team.name
        svc = service()
        svc.limits.check_rate(team)
        if request.headers.get("content-type", "").startswith("application/json"):
            raw = await request.body()
            # Hashing, JSON and base64 of a large body would stall the event loop: off it.
            fingerprint, (body, image) = await run_in_threadpool(
                lambda: (hashlib.sha256(raw).digest(), _parse_json(raw)))
        else:
            fingerprint = None
            body, image = await parse_single(request)
        key, clean = await run_in_threadpool(svc.prepare, body, image)
        if fingerprint is not None:
            svc.remember_raw(fingerprint, key)
        async with _disconnect_watch(request) as gone:
            try:
                value = await svc.interact(team, body.priority, key, clean, gone=gone)
            except ClientGone:
                return Response(status_code=499)
        return _json(value)

    @app.post("/interactions/batch", response_model=BatchResponseBody, responses=error_responses)
    async def interactions_batch(batch: BatchRequestBody, request: Request, team: Team = Depends(authenticate),
                                 format: Literal["json", "binary"] = "json"):
        """`?format=binary` answers `application/x-lfi-maps` (shared.codec.unpack_batch reads it)."""
        request.state.team = team.name
        svc = service()
        svc.limits.check_rate(team, n=1)
        items: list[bytes | None] = [None] * len(batch.items)
        key_only = [i for i, item in enumerate(batch.items) if item.image is None]
        for i in key_only:
            if batch.items[i].key is None:
                items[i] = error_json(InvalidRequest("a batch item needs 'image' or 'key'"))
        lookups = [i for i in key_only if batch.items[i].key is not None]
        found = await svc.lookup_many([batch.items[i].key for i in lookups])
        for i, value in zip(lookups, found, strict=True):
            missing = NotFound(f"no map cached under key {batch.items[i].key}")
            items[i] = value if value is not None else error_json(missing)

        async def one(i: int, gone: asyncio.Future) -> None:
            item = batch.items[i]
            try:
                key, clean = await run_in_threadpool(svc.prepare, item, _b64(item.image))
                items[i] = await svc.interact(team, item.priority, key, clean, gone=gone)
            except LfiError as exc:
                items[i] = error_json(exc)

        async with _disconnect_watch(request) as gone:
            try:
                await asyncio.gather(*(one(i, gone) for i, item in enumerate(batch.items) if item.image is not None))
            except ClientGone:
                return Response(status_code=499)
        if format == "binary":
            packed = await run_in_threadpool(lambda: pack_batch([orjson.loads(item) for item in items]))
            return Response(packed, media_type=BINARY_MEDIA_TYPE)
        return _json(b'{"items":[' + b",".join(items) + b"]}")

    @app.get("/interactions/{key}", response_model=InteractionResponse, responses=error_responses)
    async def interaction_by_key(key: str, request: Request, team: Team = Depends(authenticate)):
        request.state.team = team.name
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise InvalidRequest("key must be 64 lowercase hex characters (sha256)")
        return _json(await service().lookup(key))

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        svc = state["service"]
        if svc is None:
            reason = state["loading_error"] or "model loading"
            return JSONResponse({"status": "not-ready", "reason": reason}, status_code=503,
                                headers={"Retry-After": "5"})
        if not await svc.cache.ping():
            return {"status": "degraded", "reason": svc.cache.degraded_reason, "model": svc.info()["model"]}
        return {"status": "ready", "model": svc.info()["model"]}

    @app.get("/metrics")
    async def prometheus():
        svc = state["service"]
        if svc is not None:
            for team, depth in svc.batcher.depths().items():
                for priority, n in depth.items():
                    metrics.queue_depth.labels(team, priority).set(n)
            metrics.gpu_busy.set(svc.batcher.busy_fraction())
            metrics.dropped.set(svc.batcher.dropped)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info(team: Team = Depends(authenticate)):
        """What a client needs to compute cache keys itself (shared.keys.map_key)."""
        return service().info()

    @app.get("/stats")
    async def stats(team: Team = Depends(authenticate), recent: int = 200):
        svc = service()
        batches = list(svc.batcher.batches)[-max(0, min(recent, 2048)):]
        depths = svc.batcher.depths()
        visible = list(config.teams.by_name) if team.admin else [team.name]
        usage = {name: {"maps_today": await svc.limits.usage(name),
                        "daily_quota": config.teams.by_name[name].daily_quota,
                        "queued": depths.get(name, {"interactive": 0, "bulk": 0})} for name in visible}
        lookups = svc.cache.hits + svc.cache.misses
        return {
            "model": svc.info()["model"],
            "queue_depth": {name: depths[name] for name in depths if name in visible},
            "batches": {"count": len(svc.batcher.batches), "recent": [
                {"size": b.size, "seconds": round(b.seconds, 4),
                 "teams": b.teams if team.admin else {k: v for k, v in b.teams.items() if k == team.name},
                 "backlogged": b.backlogged if team.admin else None} for b in batches]},
            "cache": {"hits": svc.cache.hits, "misses": svc.cache.misses,
                      "hit_rate": svc.cache.hits / lookups if lookups else None,
                      "degraded": svc.cache.degraded_reason},
            "gpu_busy_fraction": svc.batcher.busy_fraction(),
            "engine_runs": svc.engine_runs,
            "dropped": svc.batcher.dropped,
            "teams": usage,
        }

    fast = CachedFastPath(app, state, config.teams, metrics)
    return BodyLimit(Observe(fast, metrics), config.max_body_bytes)  # type: ignore[return-value]


@asynccontextmanager
async def _disconnect_watch(request: Request):
    """One task per HTTP request that completes when the client disconnects.

    The body is already read, so the next ASGI receive() only returns on
    disconnect: waiting on it costs nothing, unlike polling is_disconnected().
    """

    async def until_disconnected() -> None:
        message = await request.receive()
        while message["type"] != "http.disconnect":
            message = await request.receive()

    task = asyncio.create_task(until_disconnected())
    try:
        yield task
    finally:
        task.cancel()


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("'image' is not valid base64") from None


def _describe(errors) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts)

