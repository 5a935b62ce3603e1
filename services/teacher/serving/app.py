"""The teacher's FastAPI app: routers, error handlers, middlewares, and the lifespan that loads the model.

The REST layer only parses, authenticates, calls `TeacherService` and maps errors (shared.web);
the engine knows nothing of HTTP. What routes share lives on `app.state` as typed objects:
`app.state.teams` (read by `shared.web.current_team`) and `app.state.teacher` (`TeacherState`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.teacher.engine.extraction import InteractionEngine
from services.teacher.serving.cache import MapCache
from services.teacher.serving.limits import TeamLimits
from services.teacher.serving.metrics import TeacherMetrics
from services.teacher.serving.middleware import BodyLimit, CachedFastPath, Observe, ShutdownAnswer
from services.teacher.serving.routes import health, interactions, stats
from services.teacher.serving.scheduler import BatchRecord, FairBatcher
from services.teacher.serving.service import TeacherService
from services.teacher.serving.state import TeacherConfig, TeacherState
from shared.errors import LfiError
from shared.web import install_error_handlers

log = logging.getLogger("lfi.teacher.app")


def create_app(config: TeacherConfig) -> FastAPI:
    app = FastAPI(title="lfi teacher", version="1", lifespan=lifespan,
                  description="Interaction maps C_VLM from LLaVA-1.5. See docs/api.md.")
    state = TeacherState(config=config, metrics=TeacherMetrics())
    app.state.teacher = state
    app.state.teams = config.teams
    install_error_handlers(app)
    for router in (interactions.router, health.router, stats.router):
        app.include_router(router)
    # The last added runs first: BodyLimit, then Observe (which so counts a shutdown's 503 as a 503), then
    # ShutdownAnswer, the fast path, and routing.
    app.add_middleware(CachedFastPath, state=state)
    app.add_middleware(ShutdownAnswer)
    app.add_middleware(Observe, metrics=state.metrics)
    app.add_middleware(BodyLimit, max_bytes=config.settings.max_body_bytes)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model and start the GPU thread before the first request; stop both at shutdown."""
    state: TeacherState = app.state.teacher
    config = state.config
    cache = MapCache(config.redis_url, ttl_s=config.map_ttl_s)
    await cache.ping()  # a Redis that is down now only degrades the cache; it is retried later
    engine = await _load_engine(state)
    batcher = FairBatcher(engine.extract_batch, max_batch_size=config.settings.max_batch_size,
                          max_wait_s=config.settings.max_wait_ms / 1000,
                          max_queue_per_team=config.settings.max_queue_per_team)
    batcher.on_batch = lambda record: _observe_batch(state.metrics, record)
    batcher.start()
    state.service = TeacherService(engine, cache, batcher, TeamLimits(cache), state.metrics,
                                   request_timeout_s=config.settings.request_timeout_s)
    log.info("teacher ready: %s", engine.vlm.identity)
    try:
        yield
    finally:
        await asyncio.to_thread(batcher.stop)
        await cache.close()


async def _load_engine(state: TeacherState) -> InteractionEngine:
    config, settings = state.config, state.config.settings
    try:
        return await asyncio.to_thread(
            InteractionEngine.from_pretrained, config.model, dtype=settings.dtype, device=settings.device,
            settings=config.extraction, max_batch_size=settings.max_batch_size,
            answer_backend=settings.answer_backend, max_pixels=settings.max_pixels, capture=settings.capture,
            cache_dir=config.cache_dir)
    except LfiError as exc:  # a clear message, no traceback: the user fixes the model reference
        state.loading_error = exc.message
        log.error("model failed to load: %s", exc.message)
        raise SystemExit(2) from None
    except Exception as exc:
        state.loading_error = f"{exc.__class__.__name__}: {exc}"
        log.exception("model failed to load")
        raise


def _observe_batch(metrics: TeacherMetrics, record: BatchRecord) -> None:
    metrics.batch_size.observe(record.size)
    metrics.batch_seconds.observe(record.seconds)
