"""The teacher service as teams use it: a real redis-server, a real uvicorn process, HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.codec import decode_map
from shared.keys import map_key, pixel_digest
from tests.support.processes import TEAM_KEYS, wait_for

pytestmark = pytest.mark.slow


def _png(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _body(seed: int, **extra) -> dict:
    return {"image": base64.b64encode(_png(seed)).decode(), "label": "cat", "grid": [4, 4], **extra}


def _auth(team: str = "alpha") -> dict:
    return {"Authorization": f"Bearer {TEAM_KEYS[team]}"}


def _stats(url: str) -> dict:
    return httpx.get(url + "/stats", headers=_auth("admin"), timeout=10).json()


def maps_computed(url: str) -> int:
    """Maps the engine computed, all teams, from the Prometheus counter an operator watches."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    return int(sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name == "lfi_teacher_maps_computed"
                   for sample in family.samples if sample.name.endswith("_total")))


def test_second_identical_request_is_cached_and_skips_the_engine(teacher):
    server = teacher()
    first = httpx.post(server.url + "/interactions", json=_body(1), headers=_auth(), timeout=60)
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False
    runs = maps_computed(server.url)
    assert runs == 1 and _stats(server.url)["engine_runs"] == runs  # /stats reports the same count
    again = httpx.post(server.url + "/interactions", json=_body(1), headers=_auth("beta"), timeout=60)
    assert again.json()["cached"] is True
    assert again.json()["key"] == first.json()["key"]
    assert maps_computed(server.url) == runs
    m = decode_map(again.json()["map"])
    assert m.shape == (4, 4) and abs(float(m.sum()) - 1) < 1e-2
    # the same pixels re-encoded (JPEG-lossless is not possible; use BMP) hit the same key
    image = Image.open(io.BytesIO(_png(1)))
    bmp = io.BytesIO()
    image.save(bmp, format="BMP")
    third = httpx.post(server.url + "/interactions", headers=_auth(), timeout=60,
                       json={**_body(1), "image": base64.b64encode(bmp.getvalue()).decode()})
    assert third.json()["cached"] is True
    # and a key-only look-up, also computed by the client from its own pixels
    info = httpx.get(server.url + "/info", headers=_auth(), timeout=10).json()
    key = map_key(pixels=pixel_digest(image.convert("RGB")), task="classification", label="cat", vocabulary=None,
                  boxes=[], prompt="fg-bg-vocab", prompt_version=info["prompts"]["fg-bg-vocab"], grid=[4, 4],
                  per_instance=False, return_layers=False, extraction=info["extraction"],
                  model_id=info["model"]["id"], model_revision=info["model"]["revision"])
    assert key == first.json()["key"]
    by_key = httpx.get(f"{server.url}/interactions/{key}", headers=_auth(), timeout=10)
    assert by_key.status_code == 200 and by_key.json()["cached"] is True
    assert httpx.get(f"{server.url}/interactions/{'0' * 64}", headers=_auth(), timeout=10).status_code == 404


def test_ten_identical_concurrent_requests_run_the_engine_once_across_two_replicas(teacher):
    one, two = teacher(), teacher()
    before = maps_computed(one.url) + maps_computed(two.url)

    async def fire():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(
                client.post((one if i % 2 else two).url + "/interactions", json=_body(2), headers=_auth())
                for i in range(10)))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.json()["key"] for r in responses}) == 1
    assert sum(not r.json()["cached"] for r in responses) == 1
    after = maps_computed(one.url) + maps_computed(two.url)
    assert after - before == 1


def test_multipart_upload_and_batch_route(teacher):
    server = teacher()
    multipart = httpx.post(server.url + "/interactions", headers=_auth(), timeout=60,
                           files={"image": ("x.png", _png(3), "image/png")},
                           data={"request": json.dumps({"vocabulary": ["circle", "square"], "grid": [7, 7]})})
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["map"]["shape"] == [7, 7]
    batch = httpx.post(server.url + "/interactions/batch", headers=_auth(), timeout=120, json={"items": [
        _body(4),
        {"key": multipart.json()["key"]},
        {"key": "f" * 64},
        {**_body(5), "image": base64.b64encode(b"not an image").decode()},
        _body(6, task="detection", label=None, boxes=[{"xyxy": [2, 2, 30, 30], "label": "dog"}], per_instance=True),
    ]})
    assert batch.status_code == 200, batch.text
    items = batch.json()["items"]
    assert items[0]["cached"] is False
    assert items[1]["cached"] is True and items[1]["key"] == multipart.json()["key"]
    assert items[2]["error"]["code"] == "not_found"
    assert items[3]["error"]["code"] == "invalid_image"
    assert len(items[4]["instances"]) == 1
    # the compact binary form carries the same maps
    from shared.codec import unpack_batch

    keys = [{"key": items[0]["key"]}, {"key": "f" * 64}, {"key": items[4]["key"]}]
    binary = httpx.post(server.url + "/interactions/batch", params={"format": "binary"}, headers=_auth(),
                        timeout=60, json={"items": keys})
    assert binary.headers["content-type"] == "application/x-lfi-maps"
    unpacked = unpack_batch(binary.content)
    np.testing.assert_array_equal(unpacked[0]["map"], decode_map(items[0]["map"]))
    assert unpacked[1]["error"]["code"] == "not_found"
    np.testing.assert_array_equal(unpacked[2]["instances"][0]["map"], decode_map(items[4]["instances"][0]["map"]))


def test_redis_down_serves_uncached_and_recovers(teacher, redis_server):
    import redis

    server = teacher()
    seen = httpx.post(server.url + "/interactions", json=_body(7), headers=_auth(), timeout=60)
    assert seen.status_code == 200
    redis_server.kill()
    fresh = httpx.post(server.url + "/interactions", json=_body(9), headers=_auth(), timeout=60)
    assert fresh.status_code == 200 and fresh.json()["cached"] is False  # computed without Redis
    again = httpx.post(server.url + "/interactions", json=_body(7), headers=_auth(), timeout=60)
    assert again.status_code == 200 and again.json()["key"] == seen.json()["key"]  # from the replica's memory
    ready = httpx.get(server.url + "/readyz", timeout=10).json()
    assert ready["status"] == "degraded" and "redis" in ready["reason"]
    redis_server.start()  # same port, empty
    wait_for(lambda: httpx.get(server.url + "/readyz", timeout=10).json()["status"] == "ready", 20, "recovery")
    first = httpx.post(server.url + "/interactions", json=_body(8), headers=_auth(), timeout=60)
    assert first.json()["cached"] is False
    stored = redis.Redis.from_url(redis_server.url).get("lfi:map:" + first.json()["key"])
    assert stored is not None and json.loads(stored)["key"] == first.json()["key"]  # caching in Redis resumed


def _png_claiming(width: int, height: int) -> bytes:
    data = bytearray(_png(0, (1, 1)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF)
    return bytes(data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"image": _b64(_png(0)[:60]), "label": "cat"}, 415, "invalid_image"),
        ({"image": _b64(b"GIF89a nonsense"), "label": "cat"}, 415, "invalid_image"),
        ({"image": "", "label": "cat"}, 415, "invalid_image"),
        ({"image": "***not base64***", "label": "cat"}, 415, "invalid_image"),
        ({"image": _b64(_png_claiming(20000, 20000)), "label": "cat"}, 413, "image_too_large"),
        ({"image": _b64(_png_claiming(9000, 9000)), "label": "cat"}, 413, "image_too_large"),
        ({"image": _b64(_png(0)), "task": "detection", "boxes": [{"xyxy": [0, 0, 500, 10], "label": "x"}]},
         422, "box_outside_image"),
        ({"image": _b64(_png(0)), "task": "detection", "boxes": [{"xyxy": ["nan", 0, 5, 5], "label": "x"}]},
         422, "invalid_request"),
        ({"image": _b64(_png(0)), "task": "captioning", "label": "cat"}, 422, "invalid_request"),
        ({"image": _b64(_png(0)), "prompt": "nope", "label": "cat"}, 422, "unknown_prompt"),
        ({"image": _b64(_png(0)), "vocabulary": [f"w{i}" for i in range(100_000)]}, 422, "invalid_request"),
        ({"image": _b64(_png(0)), "vocabulary": []}, 422, "empty_vocabulary"),
        ({"image": _b64(_png(0)), "label": 7}, 422, "invalid_request"),
        ({"image": _b64(_png(0)), "label": "cat", "surprise": 1}, 422, "invalid_request"),
        ({"label": "cat"}, 422, "invalid_request"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_server_stays_up(bad_input_server, body, status, code):
    response = httpx.post(bad_input_server.url + "/interactions", json=body, headers=_auth(), timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert httpx.get(bad_input_server.url + "/healthz", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def bad_input_server(tmp_path_factory, tiny_dir):
    from tests.support.processes import RedisServer, ServiceProcess, write_teams_file

    tmp = tmp_path_factory.mktemp("bad-input")
    redis = RedisServer(tmp).start()
    env = {"LFI_TEAMS_FILE": str(write_teams_file(tmp / "teams.yaml")), "LFI_REDIS_URL": redis.url,
           "LFI_TEACHER_MODEL": str(tiny_dir)}
    server = ServiceProcess(["teacher", "serve", "--max-pixels", "50000000"], env, tmp / "teacher.log").start()
    yield server
    server.stop()
    redis.kill()


def test_auth_body_size_and_media_type(bad_input_server):
    url = bad_input_server.url + "/interactions"
    assert httpx.post(url, json=_body(0), timeout=10).status_code == 401
    wrong = httpx.post(url, json=_body(0), headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    huge = httpx.post(url, content=b"0" * (200 * 1024 * 1024), timeout=60,
                      headers={**_auth(), "content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"
    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(70):
            yield b"0" * (1024 * 1024)

    chunked = httpx.post(bad_input_server.url + "/interactions/batch", content=chunks(), timeout=60,
                         headers={**_auth(), "content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
    text = httpx.post(url, content=b"hello", headers={**_auth(), "content-type": "text/plain"}, timeout=10)
    assert text.status_code == 415
    assert httpx.get(bad_input_server.url + "/metrics", timeout=10).status_code == 200  # no auth needed


def test_one_callers_refusal_is_not_shared_with_an_identical_request(teacher):
    server = teacher(teams_overrides={"tight": {"daily_quota": 0}})

    async def both():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(server.url + "/interactions", json=_body(40), headers=_auth(t))
                                          for t in ("tight", "beta", "tight", "beta")))

    tight1, beta1, tight2, beta2 = asyncio.run(both())
    assert beta1.status_code == 200 and beta2.status_code == 200, (beta1.text, beta2.text)
    for tight in (tight1, tight2):  # over quota, unless the map was already cached (hits are free)
        assert tight.status_code == 429 or tight.json()["cached"] is True


def test_rate_limit_quota_and_full_queue_answer_with_retry_after(teacher):
    server = teacher(extra_args=["--max-queue", "2", "--max-wait-ms", "200"], teams_overrides={
        "tight": {"rate_per_s": 2, "daily_quota": 2}, "beta": {"rate_per_s": 10_000}})
    statuses = [httpx.post(server.url + "/interactions", json=_body(20 + i), headers=_auth("tight"), timeout=60)
                for i in range(4)]
    codes = [r.status_code for r in statuses]
    assert 429 in codes, codes
    limited = next(r for r in statuses if r.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] in {"rate_limited", "quota_exceeded"}

    async def flood():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(server.url + "/interactions", json=_body(100 + i),
                                                      headers=_auth("beta")) for i in range(12)))

    responses = asyncio.run(flood())
    full = [r for r in responses if r.status_code == 503]
    assert full, [r.status_code for r in responses]
    assert full[0].json()["error"]["code"] == "queue_full" and int(full[0].headers["Retry-After"]) >= 1
    assert all(r.status_code in {200, 503} for r in responses)
