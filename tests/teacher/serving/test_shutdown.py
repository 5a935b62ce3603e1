"""A teacher stopped while a batch is in flight: the request is answered 503 + Retry-After, never a bare 500,
and a student's client waits for the restarted teacher instead of failing (real processes, real signals).

The batch is made slow on purpose and deterministically: a long batching window (`--max-wait-ms`) holds
the lone request in the batcher, and a short `--graceful-shutdown-s` makes uvicorn give up on it.
"""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.teacher_client import TeacherClient, encode_image
from tests.support.processes import TEAM_KEYS, wait_for

pytestmark = pytest.mark.slow
SLOW_BATCH = ["--max-wait-ms", "60000", "--max-batch-size", "8", "--graceful-shutdown-s", "0.5"]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8))


def _maps_today(url: str) -> int:
    stats = httpx.get(url + "/stats", headers={"Authorization": f"Bearer {TEAM_KEYS['alpha']}"}, timeout=5).json()
    return stats["teams"]["alpha"]["maps_today"]


def _in_background(call) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except Exception as exc:  # handed to the test, which asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_batch_cut_off_by_shutdown_is_answered_503_and_the_students_client_waits_for_the_restart(teacher):
    server = teacher(SLOW_BATCH)
    raw_item = {"image": base64.b64encode(_png_bytes(1)).decode(), "label": "cat", "grid": [4, 4]}
    raw, raw_outcome = _in_background(lambda: httpx.post(
        server.url + "/interactions/batch", json={"items": [raw_item]}, timeout=60,
        headers={"Authorization": f"Bearer {TEAM_KEYS['alpha']}"}))
    client = TeacherClient(server.url, TEAM_KEYS["alpha"], timeout_s=60)
    student, outcome = _in_background(lambda: client.batch([{"image": encode_image(_image(2)), "label": "cat",
                                                             "grid": [4, 4]}]))
    wait_for(lambda: _maps_today(server.url) == 2, 30, "both requests to reach the batcher")  # reserved, waiting
    proc = server.proc
    server.stop()  # SIGINT: uvicorn waits 0.5 s, then cancels the requests still running

    raw.join(30)
    response = raw_outcome["value"]
    assert response.status_code == 503, response.text  # was uvicorn's bare 500
    assert float(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "shutting_down"
    assert proc.returncode == 0  # a clean stop, not a crash
    assert "cut off by shutdown: answered 503" in server.log_path.read_text()

    assert student.is_alive()  # answered 503 too: the client waits instead of failing
    server.args = ["teacher", "serve"]  # back with a short batching window, on the same port
    server.start()
    student.join(120)
    assert "error" not in outcome, outcome.get("error")
    [answer] = outcome["value"]
    assert "error" not in answer and answer["map"]["shape"] == [4, 4]
    assert _maps_today(server.url) == 1  # the cut-off requests cost no quota; the retried one did
    client.close()


def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    _image(seed).save(buf, format="PNG")
    return buf.getvalue()
