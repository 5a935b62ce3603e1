"""A posted job spec -> a `JobSpec` that is safe to queue, or `InvalidFields` naming every field at fault.

Plain Python (no FastAPI): `POST /jobs` and its dry run `POST /jobs/validate` share it, so the form's
check before queueing and the real queueing can never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.errors import InvalidFields
from shared.job_spec import JobSpec, check_spec
from shared.teams import Team, TeamDirectory
from shared.web import describe_validation_errors


def spec_from_body(body: dict[str, Any], team: Team, teams: TeamDirectory, data_root: Path) -> JobSpec:
    """Validate `body` as `team`'s job spec, also against the data root (folders must exist below it)."""
    body = dict(body)
    if not team.admin or "team" not in body:
        body["team"] = team.name  # a team queues for itself; an admin may queue for anyone
    elif body["team"] not in teams.by_name:
        raise InvalidFields(f"unknown team {body['team']!r}", {"team": "unknown team"})
    try:
        spec = JobSpec.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
        # every wrong input of the form is marked at once, not just the first few
        raise InvalidFields(*describe_validation_errors(errors, limit=len(errors))) from None
    check_spec(spec, data_root)  # InvalidField: the error names the spec field whose path is wrong
    return spec
