"""A detection job end to end: real redis-server, a real `lfi worker`, the bundled trained tiny teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from shared.celery_config import make_celery
from shared.errors import InvalidField
from shared.job_spec import JobSpec, check_spec
from shared.jobs import JobStore, submit_job
from shared.settings import Settings
from tests.support.processes import TEAM_KEYS, CeleryWorker, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from shared.detection_synth import generate_detection

    root = tmp_path_factory.mktemp("data")
    generate_detection(root / "shapes", n_train=8, n_val=4, n_shifted=4, max_objects=2, seed=0)
    return root


@pytest.fixture
def stack(tmp_path, data_root, redis_server, teacher):
    server = teacher(extra_args=["--model", "builtin:tiny-synth"])
    env = {"LFI_REDIS_URL": redis_server.url, "LFI_TEACHER_URL": server.url, "LFI_TEACHER_KEY": TEAM_KEYS["alpha"],
           "LFI_DATA_ROOT": str(data_root), "LFI_RUNS_ROOT": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    worker = CeleryWorker("det", env, tmp_path / "worker.log").start()
    settings = Settings(redis_url=redis_server.url, data_root=data_root, runs_root=tmp_path / "runs")
    yield settings, JobStore.from_url(redis_server.url), server
    worker.stop()


def _objects(data_root: Path, split: str) -> int:
    annotations = data_root / "shapes" / "annotations" / f"instances_{split}.json"
    return len(json.loads(annotations.read_text())["annotations"])


@pytest.mark.parametrize("student", ["idetr", "detr"])
def test_a_detection_job_trains_against_the_teacher_and_reports_coco_map(stack, data_root, student):
    settings, store, server = stack
    spec = JobSpec(dataset="shapes", task="detection", student=student, epochs=2, batch_size=4, lr=1e-3,
                   eval_domains=["shifted"], team="alpha")
    assert spec.model == "cdetr-tiny"
    job_id = submit_job(store, make_celery(settings), spec, settings.data_root)["id"]
    record = wait_for(lambda: store.get(job_id)["status"] in {"succeeded", "failed"} and store.get(job_id), 300,
                      f"job {job_id} to finish", interval_s=0.2)
    assert record["status"] == "succeeded", record.get("error")
    metrics = record["metrics"]
    assert metrics["epoch"] == 2 and metrics["task"] == "detection"
    for result in (metrics["val_map"], metrics["heldout_map"]["shifted"]):
        assert set(result) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert 0.0 <= result["AP"] <= result["AP50"] <= 1.0
    epochs = [e for _, e in store.events(job_id) if e["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    stats = httpx.get(server.url + "/stats", headers={"Authorization": f"Bearer {TEAM_KEYS['alpha']}"}).json()
    samples = [e for _, e in store.events(job_id) if e["type"] == "samples"]
    pictures = json.loads(Path(samples[-1]["path"]).read_text())
    assert pictures["task"] == "detection" and pictures["grid"] == [8, 8] and pictures["samples"]
    truth = pictures["samples"][0]["truth"][0]
    if student == "idetr":
        # one map per training object, asked once each (epoch 2 reads the job's own cache): the teacher
        # computed exactly as many maps as there are objects, and each is a distribution on the 8x8 memory
        assert metrics["align_loss"] > 0
        assert _served(stats) == _objects(data_root, "train") + _objects(data_root, "val")
        assert len(truth["map"]) == 64 and abs(sum(truth["map"]) - 1) < 1e-3
        assert len(truth["attention"]) == 64
    else:
        assert metrics["align_loss"] == 0 and _served(stats) == 0 and "map" not in truth


def _served(stats: dict) -> int:
    """Maps the teacher computed, from its /stats."""
    return int(stats["engine_runs"])


def test_detection_specs_name_the_field_at_fault(data_root):
    with pytest.raises(ValidationError, match="task detection takes model"):
        JobSpec(dataset="shapes", task="detection", model="vit-tiny")
    with pytest.raises(ValidationError, match="set task: detection"):
        JobSpec(dataset="shapes", student="idetr")
    classification = JobSpec(dataset="shapes", task="detection", eval_domains=["nowhere"])
    with pytest.raises(InvalidField, match="nowhere") as caught:
        check_spec(classification, data_root)
    assert caught.value.field == "eval_domains"
    (data_root / "folders").mkdir(exist_ok=True)
    with pytest.raises(InvalidField, match="lfi data synth DIR --task detection") as caught:
        check_spec(JobSpec(dataset="folders", task="detection"), data_root)
    assert caught.value.field == "dataset"


def test_lfi_train_follows_a_detection_job_and_prints_its_map(stack, tmp_path):
    settings, store, _ = stack
    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset: shapes\ntask: detection\nstudent: detr\nepochs: 2\nbatch_size: 4\n"
                    "eval_domains: [shifted]\n")
    env = {"LFI_DATA_ROOT": str(settings.data_root), "LFI_REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "services.cli", "train", str(spec)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "epoch 2:" in result.stderr and "val AP" in result.stderr and "held-out shifted AP" in result.stderr
    job_id = json.loads(result.stdout.strip().splitlines()[0])["id"]
    assert store.get(job_id)["status"] == "succeeded"
