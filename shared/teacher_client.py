"""HTTP client of the teacher (httpx): used by `lfi maps` and by students. No torch."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
from PIL import Image

from shared.keys import map_key, pixel_digest

log = logging.getLogger("lfi.teacher_client")
RETRY_STATUSES = {429, 502, 503, 504}


class TeacherUnavailable(Exception):
    """The teacher could not be reached after every retry."""


class TeacherClient:
    def __init__(self, url: str, key: str | None, *, timeout_s: float = 300.0, max_retries: int = 8) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.max_retries = max_retries
        self._info: dict | None = None

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        """The teacher's answer, retried (with backoff, honouring Retry-After) while it is unreachable or
        busy: connection errors, 429/502/503/504, and a first bare 500 (see `cut_off`)."""
        delay = 0.5
        cut_off_once = False
        for attempt in range(self.max_retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise TeacherUnavailable(f"teacher at {self.http.base_url} unreachable: {exc}") from exc
                log.warning("teacher unreachable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            if cut_off(response) and not cut_off_once and attempt < self.max_retries:
                # Requests to the teacher are idempotent (a map is keyed by its inputs): ask again. A teacher
                # that was stopping then stops answering, and the usual patience applies; one that answers
                # a bare 500 again has a real fault, which is reported.
                cut_off_once = True
                log.warning("teacher answered a bare 500 (cut off mid-request?); retrying in %.1f s", delay)
                time.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            if response.status_code in RETRY_STATUSES:
                if attempt == self.max_retries:
                    raise TeacherUnavailable(f"teacher at {self.http.base_url} busy or down "
                                             f"(HTTP {response.status_code} after {attempt + 1} tries)")
                wait = float(response.headers.get("Retry-After", delay))
                log.warning("teacher answered %d; retrying in %.1f s", response.status_code, wait)
                time.sleep(min(wait, 60))
                delay = min(delay * 2, 30)
                continue
            return response
        raise TeacherUnavailable("unreachable")  # pragma: no cover - loop always returns or raises

    def _ok(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                detail = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                detail = response.text[:300]
            hint = "; check LFI_TEACHER_KEY (a team key from the teacher's teams file)" \
                if response.status_code == 401 else ""
            raise RuntimeError(f"teacher answered {response.status_code} ({detail}){hint}")
        return response.json()

    def info(self) -> dict:
        if self._info is None:
            self._info = self._ok(self._request("GET", "/info"))
        return self._info

    def batch(self, items: Sequence[dict]) -> list[dict]:
        return self._ok(self._request("POST", "/interactions/batch", json={"items": list(items)}))["items"]

    def key_for(self, image: Image.Image, *, task: str = "classification", label: str | None = None,
                vocabulary: Sequence[str] | None = None, boxes: Sequence[dict] | None = None,
                prompt: str | None = None, grid: Sequence[int] | None = None, per_instance: bool = False,
                return_layers: bool = False) -> str:
        """The cache key the teacher would give this request, computed here from our own pixels."""
        info = self.info()
        prompt_id = prompt or info["default_prompts"][task]
        return map_key(
            pixels=pixel_digest(image), task=task, label=label, vocabulary=vocabulary, boxes=boxes or [],
            prompt=prompt_id, prompt_version=info["prompts"][prompt_id], grid=grid, per_instance=per_instance,
            return_layers=return_layers, extraction=info["extraction"], model_id=info["model"]["id"],
            model_revision=info["model"]["revision"],
        )


def cut_off(response: httpx.Response) -> bool:
    """A 500 without the teacher's error body: the server's own answer to a request it abandoned (uvicorn's
    when a shutdown outlasts its grace, or a crash in the framework), not the teacher reporting a fault
    (`engine_failed` and the like come as `{"error": {...}}`)."""
    if response.status_code != 500:
        return False
    try:
        body = response.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and isinstance(body.get("error"), dict))


def encode_image(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
