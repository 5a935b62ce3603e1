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

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8100, ge=1, le=65535, description="Port to listen on.")
    device: str = Field("auto", description="Device the model runs on: auto (cuda when a GPU is visible, else "
                        "cpu), cpu, cuda, cuda:1, ...")
    dtype: str = Field("auto", description="auto (bfloat16 on cuda, float32 on cpu) | float32 | bfloat16 | float16")
    max_batch_size: int = Field(8, ge=1, description="Sequences per GPU batch.")
    max_wait_ms: float = Field(10.0, ge=0, description="How long a batch may wait to fill (0: dynamic batching off).")
    max_queue_per_team: int = Field(1024, ge=1, description="Queued requests per team before 503.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest image accepted (pixels).")
    max_body_mb: int = Field(64, ge=1, description="Largest request body accepted (MiB).")
    request_timeout_s: float = Field(120.0, gt=0, description="A request not answered within this is failed (503).")
    graceful_shutdown_s: float = Field(5.0, ge=0, description="At shutdown, how long requests in flight may finish; "
                                       "those still running are then answered 503 + Retry-After.")
    answer_backend: Literal["transformers", "vllm"] = Field("transformers", description="transformers | vllm")
    capture: Literal["decode", "second-pass"] | None = Field(
        None, description="decode: rows kept while the answer is decoded, one pass per map (the default where "
        "answers are written in this process); second-pass: generate, then a teacher-forced forward (checking; "
        "what the vllm backend needs)")

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


def override_help(field: str) -> str:
    """`help_for` plus where the value comes from when the option is not given, for options that
    default to None so as not to override the environment (the CLI cannot show their default)."""
    prefix = TeacherSettings.model_config["env_prefix"]
    default = TeacherSettings.model_fields[field].default
    return f"{help_for(field) or ''} (env {prefix}{field.upper()}, default {default})".lstrip()
