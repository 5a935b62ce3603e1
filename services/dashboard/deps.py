"""What the routes depend on, typed: the objects `create_app` puts on `app.state`, and the checks every
mutation makes before it touches anything.

A route names what it needs (`store: Store`, `team: CurrentTeam`, `_: SameOrigin`, `body: SpecBody`)
and FastAPI hands it over; nothing is reached through a closure or a module global, so a test can build
an app around any store or settings it likes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request

from shared.errors import Forbidden, InvalidRequest, LfiError
from shared.jobs import JobStore
from shared.settings import Settings
from shared.teams import TeamDirectory


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_teams(request: Request) -> TeamDirectory:
    return request.app.state.teams  # the same attribute shared.web's `current_team` reads


def get_runs_root(request: Request) -> Path:
    return request.app.state.runs_root


AppSettings = Annotated[Settings, Depends(get_app_settings)]
Store = Annotated[JobStore, Depends(get_store)]
CeleryApp = Annotated[Celery, Depends(get_celery)]
Teams = Annotated[TeamDirectory, Depends(get_teams)]
RunsRoot = Annotated[Path, Depends(get_runs_root)]


def same_origin(request: Request) -> None:
    """Refuse a mutation sent from another site's page. The bearer header already keeps a cross-site
    form from acting for a user (see app.py); this also stops a page that somehow holds a key."""
    origin = request.headers.get("origin")
    if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
        raise Forbidden(f"cross-site request from {origin} refused")


SameOrigin = Annotated[None, Depends(same_origin)]


async def spec_body(request: Request) -> dict[str, Any]:
    """The posted job spec as a JSON object, not yet validated. Only `application/json` is read: a plain
    HTML form cannot send it cross-site without a CORS preflight. Async because reading the body is; the
    routes that use it stay sync."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise LfiError("send the job spec as application/json", code="unsupported_media_type", status=415)
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the job spec must be a JSON object")
    return body


SpecBody = Annotated[dict[str, Any], Depends(spec_body)]
