"""The dashboard: REST over the job store and the teacher's stats, plus the pages that use it.

`create_app` only wires: it puts the typed objects the routes depend on (`deps.py`) on `app.state`,
installs the error contract from `shared.web`, and includes one router per resource (`routes/`).
Routes are thin: they authenticate, parse, call `shared.jobs`, and map errors to the contract's
JSON. Jobs are queued by task name through `shared.celery_config`; nothing here imports torch.

Cross-site requests: the API authenticates with an `Authorization: Bearer` header that the page
sends from JavaScript, never with cookies, so a form on another site cannot act for a user (a
browser does not attach the header to a cross-site form post, and a cross-site `fetch` with it
needs a CORS preflight this app never grants). Mutations also refuse an `Origin` that is not this
host, and accept only `application/json` bodies.
"""

from __future__ import annotations

from pathlib import Path

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.dashboard.routes import health, jobs, me, pages, teacher
from shared.celery_config import make_celery
from shared.errors import Unavailable
from shared.jobs import JobStore
from shared.settings import Settings
from shared.teams import TeamDirectory
from shared.web import error_response, install_error_handlers

REDIS_RETRY_AFTER_S = 5.0


def create_app(settings: Settings, teams: TeamDirectory) -> FastAPI:
    app = FastAPI(title="lfi dashboard", version="1", docs_url="/docs")
    app.state.settings = settings
    app.state.teams = teams  # read by shared.web's `current_team`
    app.state.store = JobStore.from_url(settings.redis_url)
    app.state.celery = make_celery(settings)
    app.state.runs_root = Path(settings.runs_root).resolve()
    install_error_handlers(app)
    app.add_exception_handler(redis.exceptions.ConnectionError, redis_down)
    for router in (pages.router, health.router, me.router, jobs.router, teacher.router):
        app.include_router(router)
    return app


async def redis_down(request: Request, exc: Exception) -> JSONResponse:
    """Redis unreachable is a 503 the client may retry, not a traceback."""
    return error_response(Unavailable("the job store (Redis) is unreachable; try again shortly",
                                      retry_after_s=REDIS_RETRY_AFTER_S))
