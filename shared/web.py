"""What every lfi web app does the same way: bearer-key auth, the error contract, `Retry-After`.

Used by the teacher and the dashboard (both install the `fastapi` extra; nothing else imports
this module). The contract (ARCHITECTURE.md): errors are `{"error": {"code", "message"}}` with the
status of the `LfiError` raised, 429/503 carry `Retry-After` in whole seconds (at least 1), and
every route but health and metrics needs `Authorization: Bearer <team key>`.

An app opts in with `install_error_handlers(app)` and by putting its `TeamDirectory` on
`app.state.teams`; routes then take `team: CurrentTeam`.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import InvalidRequest, LfiError, Unauthorized
from shared.teams import Team, TeamDirectory

MISSING_KEY = "missing 'Authorization: Bearer <team key>' header"
UNKNOWN_KEY = "unknown team key"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authenticate(teams: TeamDirectory, authorization: str | None) -> Team:
    """The team whose key the header carries; `Unauthorized` (401) otherwise."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized(MISSING_KEY)
    team = teams.authenticate(token)
    if team is None:
        raise Unauthorized(UNKNOWN_KEY)
    return team


def current_team(request: Request) -> Team:
    return authenticate(request.app.state.teams, request.headers.get("authorization"))


CurrentTeam = Annotated[Team, Depends(current_team)]


def retry_after(seconds: float) -> str:
    """`Retry-After` in whole seconds, rounded up and never 0 (0 would invite a retry storm)."""
    return str(max(1, math.ceil(seconds)))


def error_headers(exc: LfiError) -> dict[str, str] | None:
    return {"Retry-After": retry_after(exc.retry_after_s)} if exc.retry_after_s is not None else None


def error_response(exc: LfiError, fields: dict[str, str] | None = None) -> JSONResponse:
    """The contract's error body; `fields` (form field -> message) when the error belongs to fields."""
    body = exc.to_dict()
    fields = fields or getattr(exc, "fields", None)
    if fields:
        body["error"]["fields"] = fields
    return JSONResponse(body, status_code=exc.status, headers=error_headers(exc))


def describe_validation_errors(errors: list[dict], limit: int = 5) -> tuple[str, dict[str, str]]:
    """pydantic errors -> ("field: message; ...", {field: message}); locations drop the leading "body"."""
    fields: dict[str, str] = {}
    for error in errors[:limit]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        fields[where or "body"] = error.get("msg", "invalid")
    return "; ".join(f"{k}: {v}" for k, v in fields.items()), fields


def install_error_handlers(app: FastAPI) -> None:
    """Every error an app can raise, framework ones included, in the contract's shape."""

    @app.exception_handler(LfiError)
    async def lfi_error(request: Request, exc: LfiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, LfiError):  # e.g. a body cut off by a size limit stays a 413
            return error_response(exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(LfiError(str(exc.detail), code=code, status=exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, fields = describe_validation_errors(exc.errors())
        return error_response(InvalidRequest(message), fields)
