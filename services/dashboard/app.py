"""The dashboard: REST over the job store and the teacher's stats, plus the pages that use it.

Routes are thin: they authenticate, parse, call `shared.jobs`, and map errors to the contract's
JSON. Jobs are queued by task name through `shared.celery_config`; nothing here imports torch.

Cross-site requests: the API authenticates with an `Authorization: Bearer` header that the page
sends from JavaScript, never with cookies, so a form on another site cannot act for a user (a
browser does not attach the header to a cross-site form post, and a cross-site `fetch` with it
needs a CORS preflight this app never grants). Mutations also refuse an `Origin` that is not this
host, and accept only `application/json` bodies.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.dashboard.pages import job_page, jobs_page
from shared.celery_config import make_celery
from shared.errors import InvalidRequest, LfiError, NotFound, Unauthorized, Unavailable
from shared.jobs import JobSpec, JobStatus, JobStore, check_spec, submit_job
from shared.settings import Settings
from shared.teams import Team, TeamDirectory

STATIC = Path(__file__).parent / "static"


class SpecError(InvalidRequest):
    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = fields


class Forbidden(LfiError):
    code = "forbidden"
    status = 403


def _describe(errors: list[dict]) -> tuple[str, dict[str, str]]:
    fields = {}
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        fields[".".join(loc) or "body"] = error.get("msg", "invalid")
    return "; ".join(f"{k}: {v}" for k, v in fields.items()), fields


def _error(exc: LfiError, fields: dict[str, str] | None = None) -> JSONResponse:
    body = exc.to_dict()
    if fields:
        body["error"]["fields"] = fields
    headers = {"Retry-After": str(int(exc.retry_after_s))} if exc.retry_after_s else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


def _plotly_js() -> Path:
    """Chart code from the installed `plotly` package: nothing fetched from a CDN, nothing vendored."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


def _eta_s(record: dict[str, Any]) -> float | None:
    from datetime import UTC, datetime

    progress = record.get("progress") or 0.0
    if record["status"] not in ("running", "waiting-teacher") or progress <= 0 or "started_at" not in record:
        return None
    elapsed = (datetime.now(UTC) - datetime.fromisoformat(record["started_at"])).total_seconds()
    return max(0.0, elapsed / progress * (1 - progress))


def _public(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("traceback",)}
    out["eta_s"] = _eta_s(record)
    return out


def create_app(settings: Settings, teams: TeamDirectory) -> FastAPI:
    app = FastAPI(title="lfi dashboard", version="1", docs_url="/docs")
    store = JobStore.from_url(settings.redis_url)
    celery = make_celery(settings)
    runs_root = Path(settings.runs_root).resolve()

    async def authenticate(request: Request) -> Team:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing 'Authorization: Bearer <team key>' header")
        team = teams.authenticate(token.strip())
        if team is None:
            raise Unauthorized("unknown team key")
        return team

    def same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            raise Forbidden(f"cross-site request from {origin} refused")

    def visible_job(job_id: str, team: Team) -> dict[str, Any]:
        record = store.get(job_id)
        if not team.admin and record["team"] != team.name:
            raise NotFound(f"no job {job_id!r}")  # another team's job does not exist for you
        return record

    @app.exception_handler(LfiError)
    async def lfi_error(request: Request, exc: LfiError):
        return _error(exc)

    @app.exception_handler(redis.exceptions.ConnectionError)
    async def redis_down(request: Request, exc: redis.exceptions.ConnectionError):
        return _error(Unavailable("the job store (Redis) is unreachable; try again shortly", retry_after_s=5))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, fields = _describe(exc.errors())
        return _error(InvalidRequest(message), fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _error(LfiError(str(exc.detail), code=code, status=exc.status_code))

    # -- pages and static files --------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(jobs_page())

    @app.get("/jobs/{job_id}/view", response_class=HTMLResponse)
    async def job_view(job_id: str):
        return HTMLResponse(job_page(job_id))

    @app.get("/static/plotly.min.js")
    async def plotly_js():
        return FileResponse(_plotly_js(), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()}:
            raise NotFound(f"no static file {name!r}")
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(path, media_type=media)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        try:
            store.redis.ping()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": f"redis: {exc}"}, status_code=503)
        return {"status": "ready"}

    # -- jobs --------------------------------------------------------------------------------------
    @app.get("/me")
    async def me(team: Team = Depends(authenticate)):
        return {"team": team.name, "admin": team.admin}

    async def spec_from(request: Request, team: Team) -> JobSpec:
        """The posted spec, validated (also against the data root); SpecError names the fields at fault."""
        same_origin(request)
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise LfiError("send the job spec as application/json", code="unsupported_media_type", status=415)
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise InvalidRequest(f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the job spec must be a JSON object")
        if not team.admin or "team" not in body:
            body["team"] = team.name  # a team queues for itself; an admin may queue for anyone
        elif body["team"] not in teams.by_name:
            raise SpecError(f"unknown team {body['team']!r}", {"team": "unknown team"})
        try:
            spec = JobSpec.model_validate(body)
        except ValidationError as exc:
            raise SpecError(*_describe(exc.errors())) from None
        try:
            check_spec(spec, settings.data_root)
        except InvalidRequest as exc:
            field = "eval_domains" if "eval domain" in exc.message else "init" if "init" in exc.message else \
                "map_store" if "map_store" in exc.message else "dataset"
            raise SpecError(exc.message, {field: exc.message}) from None
        return spec

    @app.post("/jobs", status_code=201)
    async def queue_job(request: Request, team: Team = Depends(authenticate)):
        try:
            spec = await spec_from(request, team)
        except SpecError as exc:
            return _error(exc, exc.fields)
        record = submit_job(store, celery, spec, settings.data_root)
        return JSONResponse(_public(record), status_code=201)

    @app.post("/jobs/validate")
    async def validate_job(request: Request, team: Team = Depends(authenticate)):
        """A dry run of `POST /jobs`: 200 either way, so a form can show mistakes before queueing."""
        try:
            spec = await spec_from(request, team)
        except SpecError as exc:
            return {"valid": False, "message": exc.message, "fields": exc.fields}
        return {"valid": True, "spec": spec.model_dump()}

    @app.get("/jobs")
    async def list_jobs(team: Team = Depends(authenticate), limit: int = 200):
        records = store.list(None if team.admin else team.name, limit=max(1, min(limit, 1000)))
        return {"jobs": [_public(r) for r in records]}

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str, team: Team = Depends(authenticate)):
        return _public(visible_job(job_id, team))

    @app.get("/jobs/{job_id}/metrics")
    async def job_metrics(job_id: str, team: Team = Depends(authenticate)):
        visible_job(job_id, team)
        return store.metrics(job_id)

    @app.get("/jobs/{job_id}/samples")
    async def job_samples(job_id: str, team: Team = Depends(authenticate)):
        visible_job(job_id, team)
        latest = None
        for _, event in store.events(job_id):
            if event.get("type") == "samples":
                latest = event
        if latest is None:
            return {"epoch": None, "grid": None, "samples": []}
        path = Path(latest["path"]).resolve()
        if runs_root not in path.parents or not path.is_file():
            raise NotFound("the job's sample maps are not readable from this dashboard's LFI_RUNS_ROOT")
        return Response(path.read_bytes(), media_type="application/json")

    @app.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request, team: Team = Depends(authenticate)):
        same_origin(request)
        record = visible_job(job_id, team)
        if JobStatus(record["status"]).terminal:
            return _public(record)
        return _public(store.request_cancel(job_id))

    # -- teacher -----------------------------------------------------------------------------------
    @app.get("/teacher/stats")
    async def teacher_stats(request: Request, team: Team = Depends(authenticate)):
        """The teacher's /stats as this team may see it (the teacher filters by the same key)."""
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(settings.teacher_url.rstrip("/") + "/stats", params={"recent": 200},
                                            headers={"Authorization": request.headers["authorization"]})
        except httpx.HTTPError as exc:
            raise Unavailable(f"teacher at {settings.teacher_url} unreachable: {exc}", retry_after_s=5) from None
        if response.status_code != 200:
            raise Unavailable(f"teacher answered {response.status_code}", retry_after_s=5)
        return response.json()

    return app
