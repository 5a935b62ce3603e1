"""shared.web on its own: bearer parsing, the 401s, Retry-After rounding, the error body (a tiny app)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

from shared.errors import InvalidRequest, LfiError, NotFound, RateLimited, Unauthorized, Unavailable
from shared.teams import Team, TeamDirectory, hash_key
from shared.web import (
    MISSING_KEY,
    UNKNOWN_KEY,
    CurrentTeam,
    authenticate,
    bearer_token,
    describe_validation_errors,
    error_response,
    install_error_handlers,
    retry_after,
)

TEAMS = TeamDirectory([Team(name="vision", key_sha256=hash_key("secret")),
                       Team(name="ops", key_sha256=hash_key("root"), admin=True)])


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer secret", "secret"),
    ("bearer secret", "secret"),  # the scheme is case-insensitive (RFC 7235)
    ("BEARER  secret  ", "secret"),
    ("Bearer", None),
    ("Bearer    ", None),
    ("Basic c2VjcmV0", None),
    ("secret", None),
    ("", None),
    (None, None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_authenticate_names_what_is_wrong():
    assert authenticate(TEAMS, "Bearer secret").name == "vision"
    with pytest.raises(Unauthorized) as missing:
        authenticate(TEAMS, None)
    assert missing.value.message == MISSING_KEY and missing.value.status == 401
    with pytest.raises(Unauthorized) as wrong_scheme:
        authenticate(TEAMS, "Basic secret")
    assert wrong_scheme.value.message == MISSING_KEY
    with pytest.raises(Unauthorized) as unknown:
        authenticate(TEAMS, "Bearer guess")
    assert unknown.value.message == UNKNOWN_KEY


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.5, "2"), (2.01, "3"),
                                                 (60, "60")])
def test_retry_after_rounds_up_to_whole_seconds_and_never_says_0(seconds, header):
    assert retry_after(seconds) == header


class FieldError(InvalidRequest):
    """An error that knows its fields (error_response reads any exception's `fields`)."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = fields


def test_error_response_carries_status_body_fields_and_retry_after():
    plain = error_response(NotFound("no such map"))
    assert plain.status_code == 404 and "retry-after" not in plain.headers
    assert plain.body == b'{"error":{"code":"not_found","message":"no such map"}}'
    busy = error_response(Unavailable("queue full", code="queue_full", retry_after_s=0.2))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    given = error_response(LfiError("bad", code="invalid_request", status=422), {"epochs": "must be > 0"})
    assert given.body == b'{"error":{"code":"invalid_request","message":"bad","fields":{"epochs":"must be > 0"}}}'
    carried = error_response(FieldError("bad lr", {"lr": "must be > 0"}))
    assert carried.status_code == 422 and b'"fields":{"lr":"must be > 0"}' in carried.body


def test_describe_validation_errors_drops_the_body_prefix_and_keeps_a_few():
    errors = [{"loc": ("body", "epochs"), "msg": "too small"}, {"loc": ("query", "recent"), "msg": "not an int"},
              {"loc": ("body",), "msg": "invalid JSON"}] + [{"loc": ("body", f"f{i}"), "msg": "x"} for i in range(9)]
    message, fields = describe_validation_errors(errors, limit=3)
    assert fields == {"epochs": "too small", "query.recent": "not an int", "body": "invalid JSON"}
    assert message == "epochs: too small; query.recent: not an int; body: invalid JSON"


class Spec(BaseModel):
    epochs: int


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.state.teams = TEAMS
    install_error_handlers(app)

    @app.get("/me")
    async def me(team: CurrentTeam) -> dict:
        return {"team": team.name, "admin": team.admin}

    @app.post("/spec")
    async def spec(body: Spec) -> dict:
        return {"epochs": body.epochs}

    @app.get("/busy")
    async def busy() -> dict:
        raise RateLimited("slow down", retry_after_s=1.5)

    @app.get("/wrapped")
    async def wrapped() -> dict:
        # how FastAPI reports a body it could not read: an HTTPException whose cause is ours
        raise HTTPException(400, "There was an error parsing the body") from LfiError("too big", code="body_too_large",
                                                                                      status=413)

    return TestClient(app)


def test_routes_get_the_team_or_a_401_in_the_contract_shape(client):
    assert client.get("/me", headers={"Authorization": "Bearer root"}).json() == {"team": "ops", "admin": True}
    missing = client.get("/me")
    assert missing.status_code == 401
    assert missing.json() == {"error": {"code": "unauthorized", "message": MISSING_KEY}}
    unknown = client.get("/me", headers={"Authorization": "Bearer nope"})
    assert unknown.json() == {"error": {"code": "unauthorized", "message": UNKNOWN_KEY}}


def test_handlers_shape_every_error(client):
    busy = client.get("/busy")
    assert busy.status_code == 429 and busy.headers["retry-after"] == "2"
    assert busy.json() == {"error": {"code": "rate_limited", "message": "slow down"}}
    invalid = client.post("/spec", json={"epochs": "many"})
    assert invalid.status_code == 422
    error = invalid.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith("epochs: ")
    assert list(error["fields"]) == ["epochs"]
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    not_allowed = client.delete("/me")
    assert not_allowed.status_code == 405 and not_allowed.json()["error"]["code"] == "method_not_allowed"
    wrapped = client.get("/wrapped")
    assert wrapped.status_code == 413 and wrapped.json()["error"]["code"] == "body_too_large"
