"""What the teacher's routes, middlewares and lifespan share, as typed objects on `app.state`.

`TeacherConfig` is fixed when the app is made; `TeacherState` is what the lifespan fills in (the
service once the model is loaded, or why it could not be). Routes read them through the
dependencies in `serving.deps`, never through globals or closures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.teacher.engine.extraction import ExtractionSettings
from services.teacher.serving.metrics import TeacherMetrics
from services.teacher.serving.service import TeacherService
from services.teacher.settings import TeacherSettings
from shared.teams import TeamDirectory


@dataclass(frozen=True)
class TeacherConfig:
    """Where the model and Redis are, who may call, and the tunables (`TeacherSettings`)."""

    model: str  # a resolved checkpoint folder or hub id
    redis_url: str
    teams: TeamDirectory
    settings: TeacherSettings
    # Maps expire, so Redis' volatile-lru can evict them (and only them); None: they never expire.
    map_ttl_s: int | None
    extraction: ExtractionSettings | None = None  # None: the checkpoint's recommendation
    cache_dir: Path | None = None  # where the vLLM backend keeps its copy of the weights (None: default)


@dataclass
class TeacherState:
    config: TeacherConfig
    metrics: TeacherMetrics
    service: TeacherService | None = None  # None until the lifespan has loaded the model
    loading_error: str | None = None  # why the model did not load, for /readyz
