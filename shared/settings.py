"""Settings, read once from the environment (LFI_*)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LFI_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    teacher_url: str = "http://127.0.0.1:8100"
    teacher_key: str | None = None  # bearer key the CLI and students send to the teacher
    # A hub id, a local folder, or "builtin:<preset>" for the project's own offline checkpoint.
    teacher_model: str = "builtin:tiny-synth"
    teams_file: Path | None = None
    data_root: Path = Path("data")
    runs_root: Path = Path("runs")
    cache_dir: Path = Path.home() / ".cache" / "lfi"
    # Maps in Redis expire after this (0: never). With a TTL, Redis' `volatile-lru` evicts maps
    # under memory pressure and never job records, queues or quotas.
    map_ttl_s: int = 30 * 86400
    # Jobs. Celery's redelivery is not what recovers a dead worker's job (see shared/jobs.py):
    # a job lease that live workers renew, and reclaim when it goes stale, is.
    celery_visibility_timeout_s: float = 3600.0
    celery_restore_interval_s: float = 10.0
    job_lease_s: float = 15.0  # a worker that misses renewals for this long has lost its job
    job_reclaim_interval_s: float = 5.0  # how often each worker looks for orphaned jobs


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
