"""`/interactions` (one, batch, by key) and `/info`: parse, call `TeacherService`, answer bytes.

The service returns the response JSON already encoded (a cached map is a byte patch of what
Redis holds), so routes answer `Response` objects and `response_model` only documents them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from services.teacher.serving.deps import ServiceDep
from services.teacher.serving.service import ClientGone, TeacherService, error_json
from shared.codec import BINARY_MEDIA_TYPE, pack_batch
from shared.errors import InvalidImage, InvalidRequest, LfiError, NotFound
from shared.schemas import BatchRequestBody, BatchResponseBody, ErrorBody, InteractionRequestBody, InteractionResponse
from shared.teams import Team
from shared.web import CurrentTeam

router = APIRouter()

CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, but logs and metrics do
ERROR_RESPONSES: dict[int | str, dict] = {code: {"model": ErrorBody}
                                          for code in (400, 401, 404, 413, 415, 422, 429, 503)}
# /interactions reads its body itself (JSON or multipart), so FastAPI cannot derive this part.
SINGLE_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {
        "schema": InteractionRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")},
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"},
        "request": {"type": "string", "description": "JSON of the other request fields"}}}},
}}}


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@router.post("/interactions", response_model=InteractionResponse, openapi_extra=SINGLE_REQUEST_BODY,
             responses=ERROR_RESPONSES)
async def interactions(request: Request, team: CurrentTeam, service: ServiceDep) -> Response:
    request.state.team = team.name
    service.limits.check_rate(team)
    if request.headers.get("content-type", "").startswith("application/json"):
        raw = await request.body()
        # Hashing, JSON and base64 of a large body would stall the event loop: off it.
        fingerprint, (body, image) = await run_in_threadpool(lambda: (hashlib.sha256(raw).digest(), parse_json(raw)))
    else:
        fingerprint = None
        body, image = await parse_multipart(request)
    key, clean = await run_in_threadpool(service.prepare, body, image)
    if fingerprint is not None:
        service.remember_raw(fingerprint, key)  # the next identical bytes take the fast path
    async with disconnect_watch(request) as gone:
        try:
            value = await service.interact(team, body.priority, key, clean, gone=gone)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
    return _json(value)


@router.post("/interactions/batch", response_model=BatchResponseBody, responses=ERROR_RESPONSES)
async def interactions_batch(batch: BatchRequestBody, request: Request, team: CurrentTeam, service: ServiceDep,
                             format: Literal["json", "binary"] = "json") -> Response:
    """`?format=binary` answers `application/x-lfi-maps` (shared.codec.unpack_batch reads it)."""
    request.state.team = team.name
    service.limits.check_rate(team, n=1)  # one call, however many items: quotas count the maps
    items = await _look_up_key_items(service, batch)
    async with disconnect_watch(request) as gone:
        try:
            await asyncio.gather(*(_compute_item(service, team, batch, items, i, gone)
                                   for i, item in enumerate(batch.items) if item.image is not None))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
    if format == "binary":
        packed = await run_in_threadpool(lambda: pack_batch([orjson.loads(item) for item in items]))
        return Response(packed, media_type=BINARY_MEDIA_TYPE)
    return _json(b'{"items":[' + b",".join(items) + b"]}")


async def _look_up_key_items(service: TeacherService, batch: BatchRequestBody) -> list[bytes | None]:
    """Answers of the key-only items (one cache round trip for all); None where an image needs computing."""
    items: list[bytes | None] = [None] * len(batch.items)
    key_only = [i for i, item in enumerate(batch.items) if item.image is None]
    for i in key_only:
        if batch.items[i].key is None:
            items[i] = error_json(InvalidRequest("a batch item needs 'image' or 'key'"))
    lookups = [i for i in key_only if batch.items[i].key is not None]
    found = await service.lookup_many([batch.items[i].key for i in lookups])
    for i, value in zip(lookups, found, strict=True):
        items[i] = value if value is not None else error_json(NotFound(f"no map cached under key {batch.items[i].key}"))
    return items


async def _compute_item(service: TeacherService, team: Team, batch: BatchRequestBody, items: list[bytes | None],
                        i: int, gone: asyncio.Future) -> None:
    """Item `i` into `items[i]`; its failure is its own answer, not the batch's."""
    item = batch.items[i]
    try:
        key, clean = await run_in_threadpool(service.prepare, item, decode_base64(item.image))
        items[i] = await service.interact(team, item.priority, key, clean, gone=gone)
    except LfiError as exc:
        items[i] = error_json(exc)


@router.get("/interactions/{key}", response_model=InteractionResponse, responses=ERROR_RESPONSES)
async def interaction_by_key(key: str, request: Request, team: CurrentTeam, service: ServiceDep) -> Response:
    request.state.team = team.name
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise InvalidRequest("key must be 64 lowercase hex characters (sha256)")
    return _json(await service.lookup(key))


@router.get("/info", response_model=None)
async def info(team: CurrentTeam, service: ServiceDep) -> dict:
    """What a client needs to compute cache keys itself (shared.keys.map_key)."""
    return service.info()


# -- parsing ----------------------------------------------------------------------------------------

def parse_json(raw: bytes) -> tuple[InteractionRequestBody, bytes]:
    """A JSON request: its fields and the decoded base64 image bytes."""
    try:
        body = InteractionRequestBody.model_validate_json(raw)
    except ValidationError as exc:  # the same 422 (and `fields`) as FastAPI's own validation
        raise RequestValidationError(exc.errors()) from None
    if body.image is None:
        raise InvalidRequest("'image' (base64) is required; for a look-up by key use GET /interactions/{key}")
    return body, decode_base64(body.image)


async def parse_multipart(request: Request) -> tuple[InteractionRequestBody, bytes]:
    """A multipart request: file field `image`, the other fields as JSON in form field `request`."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise LfiError("send application/json (base64 image) or multipart/form-data (file 'image')",
                       code="unsupported_media_type", status=415)
    form = await request.form()
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise InvalidRequest("multipart requests need a file field 'image'")
    fields = form.get("request") or "{}"
    try:
        body = InteractionRequestBody.model_validate_json(fields if isinstance(fields, str) else "{}")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    return body, await upload.read()


def decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("'image' is not valid base64") from None


@asynccontextmanager
async def disconnect_watch(request: Request) -> AsyncIterator[asyncio.Future]:
    """One task per HTTP request that completes when the client disconnects.

    The body is already read, so the next ASGI receive() only returns on disconnect: waiting on it
    costs nothing, unlike polling is_disconnected().
    """

    async def until_disconnected() -> None:
        message = await request.receive()
        while message["type"] != "http.disconnect":
            message = await request.receive()

    task = asyncio.create_task(until_disconnected())
    try:
        yield task
    finally:
        task.cancel()
