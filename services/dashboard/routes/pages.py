"""The two HTML pages and their static files (no key needed: pages hold no data, see ../pages.py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from services.dashboard.pages import job_page, jobs_page
from shared.errors import NotFound

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["pages"])


def plotly_js_path() -> Path:
    """Chart code from the installed `plotly` package: nothing fetched from a CDN, nothing vendored."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


@router.get("/", response_class=HTMLResponse)
async def index() -> HTMLResponse:
    return HTMLResponse(jobs_page())


@router.get("/jobs/{job_id}/view", response_class=HTMLResponse)
async def job_view(job_id: str) -> HTMLResponse:
    return HTMLResponse(job_page(job_id))


# Registered before /static/{name}, which would otherwise take this name and find no such file.
@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(plotly_js_path(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    # only a file listed in the folder: `name` can never walk out of it
    if name not in {p.name for p in STATIC.iterdir()}:
        raise NotFound(f"no static file {name!r}")
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(STATIC / name, media_type=media)
