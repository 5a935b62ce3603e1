"""Teams: who may call the teacher, with what weight, rate and daily quota.

A directory loaded from a file follows that file: at most every `RELOAD_CHECK_S` a lookup stats it,
and a changed file (mtime, size or inode) is read again, so a key is revoked or rotated by editing
the file, without a restart. A file that no longer parses leaves the last good directory in force
(and says so in the log): a half-written edit must not lock every team out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
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


log = logging.getLogger("lfi.teams")
RELOAD_CHECK_S = 1.0  # how stale a revoked key may be: one stat per second at most, not one per request


def _file_stamp(path: Path) -> tuple[int, int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _read_teams(path: Path) -> list[Team]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read teams file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"teams file {path} is not valid YAML: {exc}") from exc
    return TeamsFile.model_validate(raw).teams


class TeamDirectory:
    """Bearer key -> team. Keys are only ever held hashed. Made by `load`, it re-reads its file when the
    file changes (checked at most every `reload_check_s`)."""

    def __init__(self, teams: list[Team], path: Path | None = None, reload_check_s: float = RELOAD_CHECK_S) -> None:
        self._install(teams)
        self.path = path
        self.reload_check_s = reload_check_s
        self._stamp = _file_stamp(path) if path is not None else None
        self._checked_at = time.monotonic()
        self._lock = threading.Lock()

    def _install(self, teams: list[Team]) -> None:
        names = [t.name for t in teams]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate team names in {names}")
        self._by_hash = {t.key_sha256: t for t in teams}
        self._by_name = {t.name: t for t in teams}

    @classmethod
    def load(cls, path: str | Path, reload_check_s: float = RELOAD_CHECK_S) -> TeamDirectory:
        return cls(_read_teams(Path(path)), Path(path), reload_check_s)

    def refresh(self, force: bool = False) -> bool:
        """Read the file again if it changed since the last read. True when new teams were installed."""
        if self.path is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked_at < self.reload_check_s:
            return False
        with self._lock:
            self._checked_at = now
            try:
                stamp = _file_stamp(self.path)
                if stamp == self._stamp and not force:
                    return False
                self._install(_read_teams(self.path))
            except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
                log.error("teams file %s changed but cannot be used (%s); the previous teams stay in force",
                          self.path, exc)
                return False
            self._stamp = stamp
            log.warning("teams file %s re-read: %d teams", self.path, len(self._by_name))
            return True

    @property
    def by_hash(self) -> dict[str, Team]:
        self.refresh()
        return self._by_hash

    @property
    def by_name(self) -> dict[str, Team]:
        self.refresh()
        return self._by_name

    def authenticate(self, bearer: str | None) -> Team | None:
        if not bearer:
            return None
        return self.by_hash.get(hash_key(bearer))
