"""Maps for the student from a real teacher (uvicorn + redis-server, tiny model) and from a map store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from services.student.data import Sample, discover
from services.student.maps import MapRequest, StoreMaps, TeacherMaps
from services.student.precompute import MapsOptions, precompute_dataset
from shared.codec import encode_map
from shared.images import decode_image
from shared.mapstore import MapStore, MapStoreWriter
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
    server = teacher()
    client = TeacherClient(server.url, TEAM_KEYS["alpha"])
    report = precompute_dataset(client, synth_small / "train", MapsOptions(), export=tmp_path / "store")
    assert report.exported == 32 and report.computed == 32
    requests = _requests(synth_small, n=32)
    student = TeacherMaps(client, vocabulary=discover(synth_small).words)
    from_teacher = student.fetch(requests)
    assert student.stats["teacher_cached"] == 32  # lfi maps asked exactly as the student does: all hits
    server.stop()
    store = StoreMaps(tmp_path / "store")
    from_store = store.fetch(requests)
    assert store.stats == {"found": 32, "missing": 0}
    assert all(np.allclose(a, b, atol=1e-3) for a, b in zip(from_teacher, from_store, strict=True))


def test_the_student_lists_the_classes_in_prompt_1(teacher, synth_small):
    server = teacher()
    client = TeacherClient(server.url, TEAM_KEYS["alpha"])
    words = discover(synth_small).words
    request = _requests(synth_small, n=1)[0]
    TeacherMaps(client, vocabulary=words).fetch([request])
    asked = client.key_for(request.image, label=request.label, vocabulary=words)
    label_only = client.key_for(request.image, label=request.label)
    found = client.batch([{"key": asked}, {"key": label_only}])
    assert "map" in found[0] and found[1]["error"]["code"] == "not_found"


def _tiny_imagenet(root, synth_root):
    """TinyImageNet's layout with the synthetic set's pictures: train/<wnid>/images, val/val_annotations.txt."""
    classes = {"n01443537": "circle", "n02123045": "cross"}
    words = {"n01443537": "goldfish, Carassius auratus", "n02123045": "European fire salamander"}
    lines = []
    for wnid, shape in classes.items():
        pictures = sorted((synth_root / "train" / shape).glob("*.png"))
        for i, picture in enumerate(pictures[:3]):
            target = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(picture).convert("RGB").save(target, format="JPEG")
        val = root / "val" / "images" / f"val_{len(lines)}.JPEG"
        val.parent.mkdir(parents=True, exist_ok=True)
        Image.open(pictures[-1]).convert("RGB").save(val, format="JPEG")
        lines.append(f"{val.name}\t{wnid}\t0\t0\t8\t8\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    (root / "words.txt").write_text("".join(f"{wnid}\t{names}\n" for wnid, names in words.items()))
    (root / "wnids.txt").write_text("\n".join(classes) + "\n")
    return root


def test_lfi_maps_on_tinyimagenet_labels_with_words_and_keys_as_the_student(teacher, synth_small, tmp_path):
    server = teacher()
    root = _tiny_imagenet(tmp_path / "tiny-imagenet-200", synth_small)
    env = {**os.environ, "LFI_TEACHER_URL": server.url, "LFI_TEACHER_KEY": TEAM_KEYS["alpha"]}
    result = subprocess.run([sys.executable, "-m", "services.cli", "maps", str(root), "--export",
                             str(tmp_path / "store")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == 8 and summary["exported"] == 8 and summary["failed"] == 0
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert "train/n02123045/images/n02123045_2.JPEG" in index["images"] and "val/images/val_1.JPEG" in index["images"]
    data = discover(root)
    requests = [MapRequest(s, decode_image(s.path.read_bytes()), data.label_word(s.label)) for s in data.train.samples]
    assert {r.label for r in requests} == {"goldfish", "European fire salamander"}  # never 'images', never a wnid
    student = TeacherMaps(TeacherClient(server.url, TEAM_KEYS["beta"]), vocabulary=data.words)
    student.fetch(requests)
    assert student.stats["teacher_cached"] == 6 and student.stats["teacher_computed"] == 0
    store = StoreMaps(tmp_path / "store")
    store.fetch(requests)
    assert store.stats == {"found": 6, "missing": 0}


def test_degenerate_maps_become_no_target_from_the_teacher_and_from_a_store(tmp_path):
    uniform = np.full((4, 4), 1 / 16, np.float32)  # what the teacher sends with degenerate: true
    maps = TeacherMaps(client=None)
    assert not maps._target({"map": encode_map(uniform), "degenerate": True}).any()
    assert np.allclose(maps._target({"map": encode_map(uniform), "degenerate": False}), uniform, atol=1e-4)
    assert maps.stats["degenerate"] == 1
    writer = MapStoreWriter(tmp_path / "store")
    writer.add("a" * 64, uniform, image="train/x/0.png", degenerate=True)
    writer.add("b" * 64, uniform, image="train/x/1.png")
    writer.close()
    samples = [Sample(tmp_path / name, 0, f"train/x/{name}") for name in ("0.png", "1.png")]
    flagged, kept = StoreMaps(tmp_path / "store").fetch([MapRequest(s, None, "x") for s in samples])
    assert not flagged.any() and np.allclose(kept, uniform, atol=1e-4)
    assert MapStore(tmp_path / "store").degenerate == {"a" * 64}
