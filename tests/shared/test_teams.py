"""Teams: a directory loaded from a file follows the file; a revoked key gets 401 within seconds on a real
teacher and a real dashboard, and a rotated key works, without a restart."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import yaml

from shared.teams import TeamDirectory, hash_key
from tests.support.processes import TEAM_KEYS, ServiceProcess, wait_for, write_teams_file


def _rewrite(path, keys: dict[str, str]) -> None:
    """The teams file with exactly these team -> key entries (admin stays admin)."""
    teams = [{"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "admin": name == "admin"}
             for name, key in keys.items()]
    path.write_text(yaml.safe_dump({"teams": teams}))


def test_a_changed_file_is_read_again_and_a_broken_one_is_not_installed(tmp_path):
    path = write_teams_file(tmp_path / "teams.yaml")
    teams = TeamDirectory.load(path, reload_check_s=0)
    assert teams.authenticate("key-alpha").name == "alpha"
    _rewrite(path, {"beta": "key-beta-rotated", "admin": "key-admin"})
    assert teams.authenticate("key-alpha") is None  # revoked
    assert teams.authenticate("key-beta") is None  # rotated away
    assert teams.authenticate("key-beta-rotated").name == "beta"
    assert set(teams.by_name) == {"beta", "admin"}
    path.write_text("teams: [{name: Not A Name")  # half-written: the last good teams stay
    assert teams.authenticate("key-beta-rotated").name == "beta"
    path.unlink()
    assert teams.authenticate("key-admin").name == "admin"


def test_checks_are_throttled_to_one_stat_per_interval(tmp_path):
    path = write_teams_file(tmp_path / "teams.yaml")
    teams = TeamDirectory.load(path, reload_check_s=3600)
    _rewrite(path, {"admin": "key-admin"})
    assert teams.authenticate("key-alpha").name == "alpha"  # not looked at again yet
    assert teams.refresh(force=True)
    assert teams.authenticate("key-alpha") is None


def test_a_directory_built_in_memory_never_reloads():
    from shared.teams import Team

    teams = TeamDirectory([Team(name="vision", key_sha256=hash_key("secret"))])
    assert not teams.refresh(force=True)
    assert teams.authenticate("secret").name == "vision"


@pytest.mark.slow
def test_revoke_and_rotate_on_a_running_teacher_and_dashboard(tmp_path, teacher, redis_server):
    server = teacher()
    teams_file = tmp_path / "teams-0.yaml"  # the file the teacher fixture wrote and the teacher reads
    dashboard = ServiceProcess(["dashboard"], {"LFI_REDIS_URL": redis_server.url, "LFI_TEAMS_FILE": str(teams_file),
                                               "LFI_DATA_ROOT": str(tmp_path), "LFI_RUNS_ROOT": str(tmp_path / "runs"),
                                               "LFI_TEACHER_URL": server.url},
                               tmp_path / "dashboard.log", health="/healthz").start()
    try:
        def status(base: str, path: str, key: str) -> int:
            return httpx.get(base + path, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code

        for key in (TEAM_KEYS["alpha"], TEAM_KEYS["beta"]):
            assert status(server.url, "/stats", key) == 200 and status(dashboard.url, "/jobs", key) == 200
        _rewrite(teams_file, {"beta": "key-beta-rotated", "admin": TEAM_KEYS["admin"]})
        for base, path in ((server.url, "/stats"), (dashboard.url, "/jobs")):
            wait_for(lambda b=base, p=path: status(b, p, TEAM_KEYS["alpha"]) == 401, 10, f"alpha revoked on {base}")
            assert status(base, path, TEAM_KEYS["beta"]) == 401
            assert status(base, path, "key-beta-rotated") == 200
            assert status(base, path, TEAM_KEYS["admin"]) == 200
    finally:
        dashboard.stop()
