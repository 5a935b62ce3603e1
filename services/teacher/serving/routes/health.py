"""`/healthz`, `/readyz`, `/metrics`: for orchestrators and Prometheus, so no team key is asked."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.teacher.serving.deps import LOADING_RETRY_S, StateDep
from shared.web import retry_after

router = APIRouter()


# response_model=None: the schema stays what it always was (the annotations would turn into one).
@router.get("/healthz", response_model=None)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(state: StateDep) -> dict | JSONResponse:
    service = state.service
    if service is None:
        reason = state.loading_error or "model loading"
        return JSONResponse({"status": "not-ready", "reason": reason}, status_code=503,
                            headers={"Retry-After": retry_after(LOADING_RETRY_S)})
    model = service.info()["model"]
    if not await service.cache.ping():
        return {"status": "degraded", "reason": service.cache.degraded_reason, "model": model}
    return {"status": "ready", "model": model}


@router.get("/metrics")
async def prometheus(state: StateDep) -> Response:
    metrics, service = state.metrics, state.service
    if service is not None:  # gauges are sampled when scraped, not kept up to date on every request
        for team, depth in service.batcher.depths().items():
            for priority, n in depth.items():
                metrics.queue_depth.labels(team, priority).set(n)
        metrics.gpu_busy.set(service.batcher.busy_fraction())
        metrics.dropped.set(service.batcher.dropped)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
