"""The teacher's ASGI middlewares: body limit, request metrics, the shutdown answer, the cached fast path.

Plain ASGI classes rather than `BaseHTTPMiddleware`: they add no task or body copy per request,
which matters on the fast path (tens of thousands of cached answers a second). `create_app`
stacks them outermost first: BodyLimit, Observe, ShutdownAnswer, CachedFastPath, then FastAPI's routing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.teacher.serving.metrics import TeacherMetrics
from services.teacher.serving.payloads import as_cached
from services.teacher.serving.state import TeacherState
from shared.errors import BodyTooLarge, RateLimited, Unavailable
from shared.teams import Team
from shared.web import bearer_token, error_response

log = logging.getLogger("lfi.teacher.middleware")

# Larger bodies are rarely repeats, and hashing them on the event loop would stall it.
FAST_PATH_MAX_BYTES = 4 * 1024 * 1024


class BodyLimit:
    """Refuses bodies over the limit before reading them (Content-Length) or while reading (chunked)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = BodyTooLarge(f"request body over the {self.max_bytes} byte limit; send fewer or smaller images")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await error_response(too_large)(scope, receive, send)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        try:
            return await self.app(scope, limited_receive, send)
        except BodyTooLarge as exc:  # raised where nothing below turned it into a response
            return await error_response(exc)(scope, receive, send)


class Observe:
    """Request count and latency per route, team and status."""

    def __init__(self, app: ASGIApp, metrics: TeacherMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            # The fast path names its route itself (it never reaches the router).
            path = scope.get("lfi_route") or getattr(scope.get("route"), "path", "unmatched")
            team = (scope.get("state") or {}).get("team", "-")
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)
            self.metrics.requests.labels(team, path, str(status)).inc()


class ShutdownAnswer:
    """A request cut off by shutdown is answered 503 + Retry-After, not uvicorn's bare 500.

    uvicorn cancels the requests still running when its graceful shutdown times out (a batch that
    outlives it, say), and answers a cancelled request 500. Map requests are idempotent and a
    restarted or sibling teacher can serve them, so the honest answer is "not now, ask again": the
    student's client retries 503 and waits for the teacher, where a 500 would fail its job. The
    cancellation is consumed once the answer is sent: the request is over, and uvicorn, which asked
    for it to end, waits for nothing more from it.
    """

    retry_after_s = 2.0  # about a teacher's restart on the tiny model; a client backs off beyond it anyway

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except asyncio.CancelledError:
            if started:
                raise  # half an answer is out: only closing the connection is left, uvicorn does that
            log.warning("%s %s cut off by shutdown: answered 503", scope["method"], scope["path"])
            answer = error_response(Unavailable("the teacher is shutting down; retry (another replica or the "
                                                "restarted teacher will answer)", code="shutting_down",
                                                retry_after_s=self.retry_after_s))
            await answer(scope, receive, send)


class CachedFastPath:
    """Repeat requests served below the framework: the hot path of a busy shared teacher.

    A POST /interactions whose exact JSON bytes were answered before (their sha256 is remembered
    with the map key) is authenticated, rate-limited and answered with one cache GET, without
    routing, validation or decoding. Everything else (unknown bytes, bad keys, misses) goes to
    FastAPI with the body replayed, so errors and semantics stay those of the routes.
    """

    def __init__(self, app: ASGIApp, state: TeacherState) -> None:
        self.app = app
        self.state = state

    def _team(self, scope: Scope) -> Team | None:
        """The caller, if this request may take the fast path at all."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/interactions":
            return None
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            return None
        length = headers.get(b"content-length", b"")
        if not length.isdigit() or int(length) > FAST_PATH_MAX_BYTES:
            return None
        # Authenticated from the headers before reading anything: no body is held for strangers.
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        return self.state.config.teams.authenticate(token) if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.state.service
        team = self._team(scope) if service is not None else None
        if team is None:
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:
            return  # the client is gone
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        key = service.raw_keys.get(hashlib.sha256(body).digest())
        stored = await service.cache.get(key) if key is not None else None
        if stored is None:
            return await self.app(scope, replay, send)
        scope.setdefault("state", {})["team"] = team.name
        scope["lfi_route"] = "/interactions"
        try:
            service.limits.check_rate(team)
        except RateLimited as exc:
            return await error_response(exc)(scope, replay, send)
        self.state.metrics.cache.labels("hit").inc()
        await Response(as_cached(stored), media_type="application/json")(scope, replay, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)
