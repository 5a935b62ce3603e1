"""Teams: who may call the teacher, with what weight, rate and daily quota."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Team(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9-]+$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    weight: float = Field(1.0, gt=0)
    rate_per_s: float = Field(50.0, gt=0)
    daily_quota: int = Field(100_000, ge=0)
    admin: bool = False


class TeamsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teams: list[Team]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TeamDirectory:
    """Bearer key -> team. Keys are only ever held hashed."""

    def __init__(self, teams: list[Team]) -> None:
        names = [t.name for t in teams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate team names in {names}")
        self.by_hash = {t.key_sha256: t for t in teams}
        self.by_name = {t.name: t for t in teams}

    @classmethod
    def load(cls, path: str | Path) -> TeamDirectory:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read teams file {path}: {exc}") from exc
        return cls(TeamsFile.model_validate(raw).teams)

    def authenticate(self, bearer: str | None) -> Team | None:
        if not bearer:
            return None
        return self.by_hash.get(hash_key(bearer))
