"""The teacher client's retry policy: which answers mean "not now" (wait) and which mean a real fault.

`cut_off` is a pure function of the response. The retry loop is checked against a scripted HTTP server
on a real socket, because the case at stake (a bare 500, then nothing listening) is one a healthy
teacher never produces on demand: the real teacher's shutdown path is tested in
tests/teacher/serving/test_shutdown.py.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from shared.teacher_client import TeacherClient, TeacherUnavailable, cut_off


@pytest.mark.parametrize(("status", "body", "content_type", "expected"), [
    (500, b"Internal Server Error", "text/plain", True),  # uvicorn's answer to an abandoned request
    (500, b"", "text/plain", True),
    (500, b'{"detail": "boom"}', "application/json", True),  # JSON, but not the teacher's error body
    (500, b'{"error": {"code": "engine_failed", "message": "out of memory"}}', "application/json", False),
    (503, b"Internal Server Error", "text/plain", False),  # 503 has its own rule (always retried)
    (200, b"{}", "application/json", False),
])
def test_a_bare_500_is_told_from_the_teachers_own_error(status, body, content_type, expected):
    response = httpx.Response(status, content=body, headers={"Content-Type": content_type})
    assert cut_off(response) is expected


class _Scripted(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, bytes, str]]] = []
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(self.path)
        status, body, content_type = self.script.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if not self.script:  # the last scripted answer: then nothing listens (connections are refused)
            threading.Thread(target=lambda: (self.server.shutdown(), self.server.server_close()), daemon=True).start()

    def log_message(self, *args) -> None:
        pass


def _serve(script: list[tuple[int, bytes, str]]) -> tuple[ThreadingHTTPServer, list[str]]:
    handler = type("Handler", (_Scripted,), {"script": list(script), "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.seen


def _client(server: ThreadingHTTPServer) -> TeacherClient:
    return TeacherClient(f"http://127.0.0.1:{server.server_address[1]}", "key", max_retries=3, timeout_s=5)


BARE_500 = (500, b"Internal Server Error", "text/plain")


def test_a_bare_500_then_silence_is_waited_on_like_a_teacher_that_is_down():
    server, seen = _serve([BARE_500])
    client = _client(server)
    with pytest.raises(TeacherUnavailable):  # what TeacherMaps waits on (it never fails a job)
        client.batch([{"key": "0" * 64}])
    assert seen == ["/interactions/batch"]


def test_a_bare_500_then_an_answer_is_the_answer():
    server, seen = _serve([BARE_500, (200, b'{"items": [{"key": "k"}]}', "application/json")])
    assert _client(server).batch([{"key": "0" * 64}]) == [{"key": "k"}]
    assert len(seen) == 2


@pytest.mark.parametrize("script", [
    [BARE_500, BARE_500],  # answering, and failing again: a real fault
    [(500, b'{"error": {"code": "engine_failed", "message": "oom"}}', "application/json")],
])
def test_a_teacher_that_keeps_answering_500_is_reported_not_retried_forever(script):
    server, seen = _serve(script)
    with pytest.raises(RuntimeError, match="teacher answered 500"):
        _client(server).batch([{"key": "0" * 64}])
    assert len(seen) == len(script)
