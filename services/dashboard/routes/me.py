"""`/me`: which team the key belongs to (the page shows it, and hides admin-only views)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from shared.web import CurrentTeam

router = APIRouter(tags=["teams"])


@router.get("/me")
def me(team: CurrentTeam) -> dict[str, Any]:
    return {"team": team.name, "admin": team.admin}
