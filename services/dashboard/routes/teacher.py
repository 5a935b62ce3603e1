"""`/teacher/stats`: the teacher's `/stats`, fetched with the caller's own key so the teacher shows
exactly what that team may see (it filters by the same key)."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request

from services.dashboard.deps import AppSettings
from shared.errors import Unavailable
from shared.web import CurrentTeam

router = APIRouter(prefix="/teacher", tags=["teacher"])

TEACHER_TIMEOUT_S = 5.0
RETRY_AFTER_S = 5.0


@router.get("/stats", response_model=None)
async def teacher_stats(request: Request, team: CurrentTeam, settings: AppSettings) -> Any:
    """Async: it waits on the network only, and an await frees the event loop while it does."""
    url = settings.teacher_url.rstrip("/") + "/stats"
    try:
        async with httpx.AsyncClient(timeout=TEACHER_TIMEOUT_S) as client:
            response = await client.get(url, params={"recent": 200},
                                        headers={"Authorization": request.headers["authorization"]})
    except httpx.HTTPError as exc:
        raise Unavailable(f"teacher at {settings.teacher_url} unreachable: {exc}",
                          retry_after_s=RETRY_AFTER_S) from None
    if response.status_code != 200:
        raise Unavailable(f"teacher answered {response.status_code}", retry_after_s=RETRY_AFTER_S)
    return response.json()
