"""`lfi maps` (services/student/precompute.py) on a real teacher: resumable, unreadable images skipped,
exported to a map store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.mapstore import MapStore
from tests.support.processes import TEAM_KEYS

pytestmark = pytest.mark.slow


def _dataset(root):
    rng = np.random.default_rng(0)
    for cls in ("circle", "square"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "square" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def _maps(url, *args, cwd):
    env = {**os.environ, "LFI_TEACHER_URL": url, "LFI_TEACHER_KEY": TEAM_KEYS["alpha"]}
    result = subprocess.run([sys.executable, "-m", "services.cli", "maps", *args], capture_output=True, text=True,
                            env=env, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_precompute_is_resumable_and_exports_a_store(teacher, tmp_path):
    server = teacher()
    data = _dataset(tmp_path / "data")
    first = _maps(server.url, str(data), "--grid", "7x7", "--batch-size", "4", cwd=tmp_path)
    counts = ("images", "computed", "cached", "unreadable", "failed", "exported", "unlabelled")
    assert {k: first[k] for k in counts} == {"images": 7, "computed": 6, "cached": 0, "unreadable": 1, "failed": 0,
                                             "exported": 0, "unlabelled": 0}
    second = _maps(server.url, str(data), "--grid", "7x7", "--export", str(tmp_path / "store"), cwd=tmp_path)
    assert {k: second[k] for k in counts} == {"images": 7, "computed": 0, "cached": 6, "unreadable": 1, "failed": 0,
                                              "exported": 6, "unlabelled": 0}
    store = MapStore(tmp_path / "store")
    assert len(store) == 6 and sorted(store.images) == [f"{c}/{i}.png" for c in ("circle", "square") for i in range(3)]
    m = store.for_image("circle/0.png")
    assert m.shape == (7, 7) and abs(float(m.sum()) - 1) < 1e-2
    # the stored map is the teacher's map for that key
    key = store.images["circle/0.png"]
    live = httpx.get(f"{server.url}/interactions/{key}", headers={"Authorization": f"Bearer {TEAM_KEYS['alpha']}"})
    from shared.codec import decode_map

    np.testing.assert_allclose(decode_map(live.json()["map"]), m)
    assert store.model == live.json()["model"]


def test_client_says_when_the_teacher_is_unreachable():
    from shared.teacher_client import TeacherClient, TeacherUnavailable
    from tests.support.processes import free_port

    client = TeacherClient(f"http://127.0.0.1:{free_port()}", "x", max_retries=1)
    with pytest.raises(TeacherUnavailable, match="unreachable"):
        client.info()
