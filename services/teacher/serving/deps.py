"""FastAPI dependencies of the teacher's routes: the typed state, and the service once it is ready.

Routes declare `state: StateDep` or `service: ServiceDep` (after `team: CurrentTeam` from
`shared.web`, so a stranger gets 401 before anything else is looked at).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.teacher.serving.service import TeacherService
from services.teacher.serving.state import TeacherState
from shared.errors import Unavailable

LOADING_RETRY_S = 5.0  # a model takes seconds to minutes to load: a client should not spin


def teacher_state(request: Request) -> TeacherState:
    return request.app.state.teacher


StateDep = Annotated[TeacherState, Depends(teacher_state)]


def ready_service(state: StateDep) -> TeacherService:
    if state.service is None:
        raise Unavailable("the model is still loading", code="loading", retry_after_s=LOADING_RETRY_S)
    return state.service


ServiceDep = Annotated[TeacherService, Depends(ready_service)]
