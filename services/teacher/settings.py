"""The teacher's own settings: one object that `lfi teacher serve`, the app and the engine all read.

Precedence: a CLI option given on the command line, else the environment (`LFI_TEACHER_*`, e.g.
`LFI_TEACHER_MAX_BATCH_SIZE=32`), else the defaults below — the only place they are written.
What several services share (Redis, teams file, model name, cache folder) stays in
`shared.settings.Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.images import DEFAULT_MAX_PIXELS


class TeacherSettings(BaseSettings):
    # extra="ignore": LFI_TEACHER_URL / _MODEL / _KEY belong to shared.settings.Settings.
    model_config = SettingsConfigDict(env_prefix="LFI_TEACHER_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8100, ge=1, le=65535)
    device: str = "cpu"
    dtype: str = "float32"
    max_batch_size: int = Field(8, ge=1, description="Sequences per GPU batch.")
    max_wait_ms: float = Field(10.0, ge=0, description="How long a batch may wait to fill (0: dynamic batching off).")
    max_queue_per_team: int = Field(1024, ge=1, description="Queued requests per team before 503.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest image accepted (pixels).")
    max_body_mb: int = Field(64, ge=1, description="Largest request body accepted (MiB).")
    request_timeout_s: float = Field(120.0, gt=0, description="A request not answered within this is failed (503).")
    answer_backend: Literal["transformers", "vllm"] = "transformers"

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * 1024 * 1024

    @classmethod
    def defaults(cls) -> TeacherSettings:
        """The defaults alone, environment not read (library callers: the engine, tests, benches)."""
        return cls.model_construct()


def help_for(field: str) -> str | None:
    """A setting's description, for the CLI option that overrides it (one text, not two)."""
    return TeacherSettings.model_fields[field].description
