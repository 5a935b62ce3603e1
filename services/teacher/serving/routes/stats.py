"""`GET /stats`: the teacher's load as JSON for the dashboard; a team sees its own, an admin all."""

from __future__ import annotations

from fastapi import APIRouter

from services.teacher.serving.deps import ServiceDep, StateDep
from services.teacher.serving.scheduler import BatchRecord
from services.teacher.serving.service import TeacherService
from shared.teams import Team, TeamDirectory
from shared.web import CurrentTeam

router = APIRouter()
MAX_RECENT = 2048  # the batcher keeps this many batch records


@router.get("/stats", response_model=None)
async def stats(team: CurrentTeam, service: ServiceDep, state: StateDep, recent: int = 200) -> dict:
    # No docstring: FastAPI would publish it in the OpenAPI schema, which stays as it was.
    batcher, cache = service.batcher, service.cache
    depths = batcher.depths()
    teams = state.config.teams
    visible = list(teams.by_name) if team.admin else [team.name]
    lookups = cache.hits + cache.misses
    return {
        "model": service.info()["model"],
        "queue_depth": {name: depths[name] for name in depths if name in visible},
        "batches": {"count": len(batcher.batches),
                    "recent": [_batch(b, team) for b in list(batcher.batches)[-max(0, min(recent, MAX_RECENT)):]]},
        "cache": {"hits": cache.hits, "misses": cache.misses, "hit_rate": cache.hits / lookups if lookups else None,
                  "degraded": cache.degraded_reason},
        "gpu_busy_fraction": batcher.busy_fraction(),
        "engine_runs": state.metrics.maps_computed_total(),  # the dashboard shows it as "maps computed"
        "dropped": batcher.dropped,
        "teams": await _usage(service, teams, visible, depths),
    }


def _batch(record: BatchRecord, team: Team) -> dict:
    """One batch as `team` may see it: other teams' shares and backlog only for an admin."""
    return {"size": record.size, "seconds": round(record.seconds, 4),
            "teams": record.teams if team.admin else {k: v for k, v in record.teams.items() if k == team.name},
            "backlogged": record.backlogged if team.admin else None}


async def _usage(service: TeacherService, teams: TeamDirectory, visible: list[str],
                 depths: dict[str, dict[str, int]]) -> dict[str, dict]:
    return {name: {"maps_today": await service.limits.usage(name), "daily_quota": teams.by_name[name].daily_quota,
                   "queued": depths.get(name, {"interactive": 0, "bulk": 0})} for name in visible}
