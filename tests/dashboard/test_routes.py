"""The dashboard's route table, checked without starting anything: the paths the docs promise, and no
`async` route that would block the event loop on synchronous Redis or the file system."""

from __future__ import annotations

import inspect

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from services.dashboard.app import create_app
from services.dashboard.deps import get_runs_root, get_store
from services.dashboard.routes import health, jobs, me, pages, teacher
from shared.settings import Settings
from shared.teams import TeamDirectory

BLOCKING = {get_store, get_runs_root}  # what a route that does blocking I/O depends on
ROUTES = [r for m in (health, jobs, me, pages, teacher) for r in m.router.routes if isinstance(r, APIRoute)]


def _calls(dependant: Dependant) -> set:
    found = {d.call for d in dependant.dependencies}
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def test_every_documented_route_is_served() -> None:
    # Neither the Redis client nor the Celery app connects before first use: no server is needed here.
    app = create_app(Settings(redis_url="redis://127.0.0.1:9/0"), TeamDirectory([]))
    served = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    assert served == {
        ("GET", "/"), ("GET", "/jobs/{job_id}/view"), ("GET", "/static/plotly.min.js"), ("GET", "/static/{name}"),
        ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/me"), ("GET", "/teacher/stats"),
        ("POST", "/jobs"), ("POST", "/jobs/validate"), ("GET", "/jobs"), ("GET", "/jobs/{job_id}"),
        ("GET", "/jobs/{job_id}/metrics"), ("GET", "/jobs/{job_id}/samples"), ("POST", "/jobs/{job_id}/cancel"),
    }


def test_routes_that_touch_redis_or_files_run_in_the_thread_pool() -> None:
    blocking = [r for r in ROUTES if _calls(r.dependant) & BLOCKING]
    assert {r.path for r in blocking} >= {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/samples", "/readyz"}
    assert [r.path for r in blocking if inspect.iscoroutinefunction(r.endpoint)] == []
    assert not inspect.iscoroutinefunction(pages.static)  # lists the static folder
