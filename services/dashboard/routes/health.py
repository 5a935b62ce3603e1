"""`/healthz` (the process answers) and `/readyz` (and can reach Redis); no key needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.dashboard.deps import Store

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(store: Store) -> JSONResponse | dict[str, Any]:
    try:
        store.redis.ping()
    except Exception as exc:  # any failure to reach Redis means "not ready", with the reason shown
        return JSONResponse({"status": "unavailable", "reason": f"redis: {exc}"}, status_code=503)
    return {"status": "ready"}
