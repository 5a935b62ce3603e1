"""`/jobs`: queue, validate, list, read, follow and cancel training jobs.

Plain `def` routes: the job store is synchronous Redis and the samples are files, so FastAPI runs each
call in its thread pool instead of stalling every other request on the event loop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from services.dashboard.deps import AppSettings, CeleryApp, RunsRoot, SameOrigin, SpecBody, Store, Teams
from services.dashboard.specs import spec_from_body
from shared.errors import InvalidFields, NotFound
from shared.jobs import JobStatus, JobStore, submit_job
from shared.teams import Team
from shared.web import CurrentTeam

router = APIRouter(prefix="/jobs", tags=["jobs"])


def eta_s(record: dict[str, Any]) -> float | None:
    """Seconds left, extrapolated from progress so far; None while there is nothing to go on."""
    progress = record.get("progress") or 0.0
    if record["status"] not in ("running", "waiting-teacher") or progress <= 0 or "started_at" not in record:
        return None
    elapsed = (datetime.now(UTC) - datetime.fromisoformat(record["started_at"])).total_seconds()
    return max(0.0, elapsed / progress * (1 - progress))


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A job record as the API shows it: without the worker's traceback, with an ETA."""
    out = {k: v for k, v in record.items() if k != "traceback"}
    out["eta_s"] = eta_s(record)
    return out


def visible_job(store: JobStore, job_id: str, team: Team) -> dict[str, Any]:
    record = store.get(job_id)
    if not team.admin and record["team"] != team.name:
        raise NotFound(f"no job {job_id!r}")  # another team's job does not exist for you
    return record


@router.post("", status_code=201)
def queue_job(team: CurrentTeam, _: SameOrigin, body: SpecBody, settings: AppSettings, teams: Teams,
              store: Store, celery: CeleryApp) -> JSONResponse:
    spec = spec_from_body(body, team, teams, settings.data_root)  # InvalidFields -> 422 with `fields`
    record = submit_job(store, celery, spec, settings.data_root)
    return JSONResponse(public(record), status_code=201)


@router.post("/validate")
def validate_job(team: CurrentTeam, _: SameOrigin, body: SpecBody, settings: AppSettings,
                 teams: Teams) -> dict[str, Any]:
    """A dry run of `POST /jobs`: 200 either way, so a form can show mistakes before queueing."""
    try:
        spec = spec_from_body(body, team, teams, settings.data_root)
    except InvalidFields as exc:
        return {"valid": False, "message": exc.message, "fields": exc.fields}
    return {"valid": True, "spec": spec.model_dump()}


@router.get("")
def list_jobs(team: CurrentTeam, store: Store, limit: int = 200) -> dict[str, Any]:
    records = store.list(None if team.admin else team.name, limit=max(1, min(limit, 1000)))
    return {"jobs": [public(r) for r in records]}


@router.get("/{job_id}")
def get_job(job_id: str, team: CurrentTeam, store: Store) -> dict[str, Any]:
    return public(visible_job(store, job_id, team))


@router.get("/{job_id}/metrics")
def job_metrics(job_id: str, team: CurrentTeam, store: Store) -> dict[str, Any]:
    visible_job(store, job_id, team)
    return store.metrics(job_id)


@router.get("/{job_id}/samples", response_model=None)
def job_samples(job_id: str, team: CurrentTeam, store: Store, runs_root: RunsRoot) -> Response | dict[str, Any]:
    """The latest sample maps the worker wrote; passed through as stored (they are JSON already)."""
    visible_job(store, job_id, team)
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


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, team: CurrentTeam, _: SameOrigin, store: Store) -> dict[str, Any]:
    record = visible_job(store, job_id, team)
    if JobStatus(record["status"]).terminal:
        return public(record)
    return public(store.request_cancel(job_id))
