"""Errors that carry the contract's error code and HTTP status.

The engines raise these; the HTTP layers only translate them into
`{"error": {"code": ..., "message": ...}}` with the status given here.
"""

from __future__ import annotations


class LfiError(Exception):
    """Base class: a problem the caller can fix, described so they know how."""

    code: str = "error"
    status: int = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s  # sent as Retry-After when set
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidRequest(LfiError):
    """The request is well-formed but asks for something impossible (422)."""

    code = "invalid_request"
    status = 422


class InvalidImage(LfiError):
    """The bytes are not a decodable image (415)."""

    code = "invalid_image"
    status = 415


class ImageTooLarge(LfiError):
    """The image is over the pixel or byte limit (413)."""

    code = "image_too_large"
    status = 413


class Unauthorized(LfiError):
    code = "unauthorized"
    status = 401


class NotFound(LfiError):
    code = "not_found"
    status = 404


class BodyTooLarge(LfiError):
    code = "body_too_large"
    status = 413


class RateLimited(LfiError):
    """Over the request rate (code rate_limited) or the daily quota (quota_exceeded); 429 + Retry-After."""

    code = "rate_limited"
    status = 429


class Unavailable(LfiError):
    """Busy or not ready (queue full, deadline passed, model loading); 503 + Retry-After."""

    code = "unavailable"
    status = 503


class EngineFailed(LfiError):
    """The model failed on a valid request (e.g. out of memory): the caller may retry."""

    code = "engine_error"
    status = 500


class InvalidFields(InvalidRequest):
    """Invalid (422), and the fault lies in named request fields: `fields` maps each to its reason,
    so a form can mark the inputs at fault instead of guessing from the message."""

    def __init__(self, message: str, fields: dict[str, str]) -> None:
        super().__init__(message)
        self.fields = dict(fields)


class InvalidField(InvalidFields):
    """One request field (`field`) is at fault; raised by checks that know which field they check."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, {field: message})
        self.field = field


class Forbidden(LfiError):
    """Authenticated, but not allowed to do this (e.g. a cross-site request); 403."""

    code = "forbidden"
    status = 403
