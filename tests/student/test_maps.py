"""Maps for the student from a real teacher (uvicorn + redis-server, tiny model) and from a map store."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from services.student.data import discover
from services.student.maps import MapRequest, StoreMaps, TeacherMaps
from shared.images import decode_image
from shared.teacher_client import TeacherClient
from tests.support.processes import TEAM_KEYS, wait_for

pytestmark = pytest.mark.slow


def _requests(root, split="train", n=8):
    data = discover(root, ["shifted"])
    images = data.train if split == "train" else data.heldout[split]
    return [MapRequest(s, decode_image(s.path.read_bytes()), data.label_word(s.label)) for s in images.samples[:n]]


def test_maps_come_from_the_teacher_once_then_from_memory_and_disk(teacher, synth_small, tmp_path):
    server = teacher()
    client = TeacherClient(server.url, TEAM_KEYS["alpha"])
    requests = _requests(synth_small)
    maps = TeacherMaps(client, cache_dir=tmp_path / "maps")
    first = maps.fetch(requests)
    assert maps.stats["teacher_computed"] == 8
    assert all(m is not None and m.ndim == 2 and m.sum() == pytest.approx(1.0, abs=1e-2) for m in first)
    server.stop()  # epoch 2 needs no teacher at all
    again = maps.fetch(requests)
    assert maps.stats["memory"] == 8
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    server.start()
    fresh = TeacherMaps(client, cache_dir=tmp_path / "maps")  # a restarted worker: local disk
    fresh.fetch(requests)
    assert fresh.stats["disk"] == 8 and fresh.stats["teacher_computed"] == 0
    other = TeacherMaps(TeacherClient(server.url, TEAM_KEYS["beta"]))  # another student: the teacher's cache
    other.fetch(requests)
    assert other.stats["teacher_cached"] == 8 and other.stats["teacher_computed"] == 0


def test_while_the_teacher_is_down_the_student_waits_and_says_so(teacher, synth_small):
    server = teacher()
    client = TeacherClient(server.url, TEAM_KEYS["alpha"], max_retries=1)
    client.info()
    server.stop()
    waits: list[str | None] = []
    retries: list[bool] = []  # one entry per failed try: the student asks whether to stop before each retry
    maps = TeacherMaps(client, on_wait=waits.append, should_stop=lambda: retries.append(False) or False,
                       max_backoff_s=0.5)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(maps=maps.fetch(_requests(synth_small, n=4))))
    worker.start()
    wait_for(lambda: waits, 30, "the student to report waiting")
    assert "unreachable" in waits[0] or "down" in waits[0]
    wait_for(lambda: len(retries) >= 3 or not worker.is_alive(), 30, "three failed tries")
    assert worker.is_alive()  # still waiting after three failed tries, not failed
    server.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and all(m is not None for m in result["maps"])
    assert waits[-1] is None  # and it said the wait is over


def test_an_exported_map_store_serves_the_same_maps_without_the_teacher(teacher, synth_small, tmp_path):
    from services.teacher.serving.bulk import BulkOptions, precompute

    server = teacher()
    client = TeacherClient(server.url, TEAM_KEYS["alpha"])
    report = precompute(client, synth_small / "train", BulkOptions(), export=tmp_path / "store")
    assert report.exported == 32
    requests = _requests(synth_small, n=32)
    from_teacher = TeacherMaps(client).fetch(requests)
    server.stop()
    store = StoreMaps(tmp_path / "store")
    from_store = store.fetch(requests)
    assert store.stats == {"found": 32, "missing": 0}
    assert all(np.allclose(a, b, atol=1e-3) for a, b in zip(from_teacher, from_store, strict=True))
