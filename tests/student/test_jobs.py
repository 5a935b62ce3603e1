"""Training jobs on Celery: real redis-server, real `lfi worker` processes, a real teacher (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from shared.celery_config import make_celery
from shared.errors import InvalidRequest
from shared.job_spec import JobSpec
from shared.jobs import JobStore, submit_job
from shared.settings import Settings
from tests.support.processes import TEAM_KEYS, CeleryWorker, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """`small`: 32 images (4 steps of 8 per epoch); `medium`: 160 images (20 steps per epoch)."""
    from shared.synth import generate

    root = tmp_path_factory.mktemp("data")
    generate(root / "small", n_train_per_class=8, n_val_per_class=2, n_shifted_per_class=2, seed=0)
    generate(root / "medium", n_train_per_class=40, n_val_per_class=2, n_shifted_per_class=2, seed=1)
    return root


@pytest.fixture
def stack(tmp_path, data_root, redis_server, teacher):
    """A teacher and a worker factory sharing one Redis; yields (settings, store, start_worker, teacher)."""
    server = teacher()
    env = {"LFI_REDIS_URL": redis_server.url, "LFI_TEACHER_URL": server.url, "LFI_TEACHER_KEY": TEAM_KEYS["alpha"],
           "LFI_DATA_ROOT": str(data_root), "LFI_RUNS_ROOT": str(tmp_path / "runs"), "LFI_JOB_LEASE_S": "3",
           "LFI_JOB_RECLAIM_INTERVAL_S": "1", "HF_HUB_OFFLINE": "1"}
    workers: list[CeleryWorker] = []

    def start_worker(name: str, **extra_env: str) -> CeleryWorker:
        worker = CeleryWorker(name, {**env, **extra_env}, tmp_path / f"worker-{name}.log")
        workers.append(worker)
        return worker.start()

    settings = Settings(redis_url=redis_server.url, data_root=data_root, runs_root=tmp_path / "runs")
    yield settings, JobStore.from_url(redis_server.url), start_worker, server
    for worker in workers:
        worker.stop()


def _submit(settings, store, **fields):
    spec = JobSpec(**{"dataset": "small", "model": "vit-tiny", "student": "ivit", "epochs": 2, "batch_size": 8,
                      "lr": 1e-3, "eval_domains": ["shifted"], "checkpoint_every": 2, "team": "alpha", **fields})
    return submit_job(store, make_celery(settings), spec, settings.data_root)["id"]


def _wait_status(store, job_id, statuses, timeout_s=180):
    return wait_for(lambda: store.get(job_id)["status"] in statuses and store.get(job_id), timeout_s,
                    f"job {job_id} to reach {statuses}", interval_s=0.1)


def _events(store, job_id, kind):
    return [e for _, e in store.events(job_id) if e["type"] == kind]


def test_a_job_runs_end_to_end_with_a_complete_record(stack):
    settings, store, start_worker, _ = stack
    start_worker("w1")
    job_id = _submit(settings, store)
    record = _wait_status(store, job_id, {"succeeded", "failed"})
    assert record["status"] == "succeeded", record.get("error")
    assert record["starts"] == 1 and record["progress"] == 1.0 and record["team"] == "alpha"
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    assert record["metrics"]["epoch"] == 2 and "shifted" in record["metrics"]["heldout_top1"]
    assert record["last_checkpoint"]["epoch"] == 2
    statuses = [e["status"] for e in _events(store, job_id, "status")]
    assert statuses == ["queued", "running", "succeeded"]
    assert [e["global_step"] for e in _events(store, job_id, "step")] == list(range(1, 9))
    assert [e["epoch"] for e in _events(store, job_id, "epoch")] == [1, 2]
    metrics = store.metrics(job_id)
    assert len(metrics["steps"]) == 8 and all(s["align_loss"] > 0 for s in metrics["steps"])
    # what the dashboard charts: images per epoch that added no alignment term, by reason
    assert all({"maps_degenerate", "maps_missing", "maps_weak_crop"} <= set(e) for e in metrics["epochs"])
    assert record["metrics"]["maps_missing"] == 0


def test_kill_9_mid_job_resumes_from_the_checkpoint_on_another_worker(stack):
    settings, store, start_worker, _ = stack
    first = start_worker("w1")
    job_id = _submit(settings, store, dataset="medium", epochs=4, checkpoint_every=5)
    wait_for(lambda: (store.get(job_id).get("last_checkpoint") or {}).get("global_step", 0) >= 10, 180,
             "a checkpoint at step 10")
    at_kill = store.get(job_id)
    assert at_kill["status"] == "running"
    first.kill9()
    killed_at = time.monotonic()
    start_worker("w2")
    wait_for(lambda: store.get(job_id)["starts"] == 2, 60, "the job to start again")  # raises after a minute
    print(f"resumed {time.monotonic() - killed_at:.1f} s after the kill")
    record = _wait_status(store, job_id, {"succeeded", "failed"})
    assert record["status"] == "succeeded", record.get("error")
    resumed = _events(store, job_id, "resumed")
    assert len(resumed) == 1 and resumed[0]["global_step"] >= at_kill["last_checkpoint"]["global_step"]
    assert _events(store, job_id, "requeued")
    assert [e["epoch"] for e in _events(store, job_id, "epoch")] == [1, 2, 3, 4]  # each epoch counted once
    assert record["metrics"]["epoch"] == 4 and record["metrics"]["global_step"] == 80


def test_a_job_longer_than_the_visibility_timeout_runs_once_with_two_workers(stack):
    settings, store, start_worker, _ = stack
    fast_redelivery = {"LFI_CELERY_VISIBILITY_TIMEOUT_S": "2", "LFI_CELERY_RESTORE_INTERVAL_S": "1"}
    start_worker("w1", **fast_redelivery)
    start_worker("w2", **fast_redelivery)
    started = time.monotonic()
    job_id = _submit(settings, store, dataset="medium", epochs=6, checkpoint_every=20)
    record = _wait_status(store, job_id, {"succeeded", "failed"}, timeout_s=300)
    assert record["status"] == "succeeded", record.get("error")
    assert time.monotonic() - started > 5 * 2  # it did run several visibility timeouts long
    assert record["starts"] == 1 and len(_events(store, job_id, "started")) == 1
    assert _events(store, job_id, "duplicate-delivery")  # Celery did deliver it again, and it was refused


def test_cancel_a_running_and_a_queued_job(stack):
    settings, store, start_worker, _ = stack
    worker = start_worker("w1")
    running = _submit(settings, store, dataset="medium", epochs=20)
    queued = _submit(settings, store)
    wait_for(lambda: store.get(running).get("global_step", 0) >= 2, 120, "the first job to train")
    assert store.request_cancel(queued)["status"] == "cancelled"
    store.request_cancel(running)
    record = _wait_status(store, running, {"cancelled", "succeeded", "failed"}, timeout_s=60)
    assert record["status"] == "cancelled" and record["global_step"] < record["total_steps"]
    # the queued job's message reaches the worker now, and is dropped without starting it
    worker.wait_for_log(f"job {queued} is cancelled already; delivery dropped", timeout_s=60)
    assert store.get(queued)["status"] == "cancelled" and store.get(queued)["starts"] == 0
    assert _events(store, queued, "started") == []


def test_teacher_down_mid_job_waits_then_finishes(stack):
    settings, store, start_worker, server = stack
    start_worker("w1")
    job_id = _submit(settings, store, dataset="medium", epochs=2)
    wait_for(lambda: store.get(job_id).get("global_step", 0) >= 1, 120, "the first step")
    server.stop()
    _wait_status(store, job_id, {"waiting-teacher"}, timeout_s=60)
    server.start()
    # 40 steps, each asking the (CPU) teacher for 8 maps in the first epoch: minutes on a loaded 2-core box
    record = _wait_status(store, job_id, {"succeeded", "failed"}, timeout_s=480)
    assert record["status"] == "succeeded", record.get("error")
    statuses = [e["status"] for e in _events(store, job_id, "status")]
    assert "waiting-teacher" in statuses and statuses[-1] == "succeeded"
    assert [e["epoch"] for e in _events(store, job_id, "epoch")] == [1, 2]


@pytest.mark.parametrize(("fields", "message"), [
    ({"dataset": "../outside"}, "outside the data root"),
    ({"dataset": "/etc"}, "relative to the data root"),
    ({"dataset": "missing"}, "not a folder"),
    ({"eval_domains": ["nope"]}, "eval domain"),
])
def test_bad_specs_are_refused_at_queue_time(stack, fields, message):
    settings, store, _, _ = stack
    with pytest.raises(InvalidRequest, match=message):
        _submit(settings, store, **fields)
    assert store.list() == []  # nothing was recorded or queued


@pytest.mark.parametrize("fields", [{"lr": -0.1}, {"model": "vit-huge"}, {"epochs": 0}, {"colour": "red"},
                                    {"eval_domains": ["../x"]}, {"align_layers": []}, {"align_layers": [-1]},
                                    {"align_layers": [4]}, {"model": "vit-s16", "align_layers": [0, 12]},
                                    {"weight_decay": -0.1}, {"warmup_steps": -1}, {"align_rows": "diagonal"},
                                    {"align_heads": "some"}, {"kl_direction": "sideways"},
                                    {"kl_direction": "model-first"}, {"kl_smoothing": 1.0}, {"min_crop_mass": 1.5}])
def test_invalid_spec_fields_are_rejected(fields):
    with pytest.raises(ValidationError):
        JobSpec(dataset="small", **fields)


def test_the_recipe_fields_have_the_trainers_defaults_and_accept_the_papers_choices():
    spec = JobSpec(dataset="small")
    assert (spec.weight_decay, spec.warmup_steps, spec.align_rows, spec.align_heads, spec.kl_direction,
            spec.kl_smoothing, spec.min_crop_mass) == (0.05, None, "cls", "mean", "target-first", 0.0, 0.25)
    paper = JobSpec(dataset="small", epochs=50, init="vit-s16-pretrained", kl_direction="model-first",
                    kl_smoothing=0.1, align_layers=[0, 11], model="vit-s16", warmup_steps=0)
    assert paper.kl_direction == "model-first" and paper.align_layers == [0, 11]
    # a pretrained init brings its own depth: its layers are checked when the model is loaded
    assert JobSpec(dataset="small", init="some/hub-vit", align_layers=[30]).align_layers == [30]


def test_lfi_train_refuses_a_bad_spec_with_the_reason(tmp_path, data_root):
    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset: small\nmodel: vit-huge\nlr: -1\n")
    result = subprocess.run([sys.executable, "-m", "services.cli", "train", str(spec)], capture_output=True,
                            text=True, env={"LFI_DATA_ROOT": str(data_root), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 2
    assert "model" in result.stderr and "lr" in result.stderr


def test_lfi_train_queues_and_follows_a_job_to_the_end(stack, tmp_path):
    settings, store, start_worker, _ = stack
    start_worker("w1")
    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset: small\nmodel: vit-tiny\nstudent: vit\nepochs: 2\nbatch_size: 8\n")
    env = {"LFI_DATA_ROOT": str(settings.data_root), "LFI_REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "services.cli", "train", str(spec)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "epoch 2:" in result.stderr and "succeeded" in result.stderr
    job_id = json.loads(result.stdout.strip().splitlines()[0])["id"]
    assert store.get(job_id)["status"] == "succeeded"


def test_a_job_trains_from_an_exported_map_store_with_the_teacher_stopped(stack):
    from services.student.precompute import MapsOptions, precompute_dataset
    from shared.teacher_client import TeacherClient

    settings, store, start_worker, server = stack
    report = precompute_dataset(TeacherClient(server.url, TEAM_KEYS["alpha"]), settings.data_root / "small" / "train",
                                MapsOptions(), export=settings.data_root / "small-maps")
    assert report.exported == 32
    server.stop()
    start_worker("w1")
    job_id = _submit(settings, store, map_store="small-maps")
    record = _wait_status(store, job_id, {"succeeded", "failed"})
    assert record["status"] == "succeeded", record.get("error")
    assert "waiting-teacher" not in [e["status"] for e in _events(store, job_id, "status")]
    assert all(s["align_loss"] > 0 for s in store.metrics(job_id)["steps"])


def test_a_failing_job_says_why_in_its_record_and_the_worker_goes_on(stack):
    from transformers import ViTForImageClassification

    from services.student.model_config import student_config

    settings, store, start_worker, _ = stack
    ViTForImageClassification(student_config("vit-tiny", 4, "off")).save_pretrained(settings.data_root / "vit-init")
    start_worker("w1")
    # a valid spec (a pretrained init's depth is known only once loaded), but the checkpoint has 4 layers
    bad = _submit(settings, store, init="vit-init", align_layers=[99])
    record = _wait_status(store, bad, {"succeeded", "failed"})
    assert record["status"] == "failed"
    assert "align_layers [99] out of range" in record["error"] and "Traceback" in record["traceback"]
    assert _events(store, bad, "status")[-1]["error"] == record["error"]
    good = _submit(settings, store, epochs=1)
    assert _wait_status(store, good, {"succeeded", "failed"})["status"] == "succeeded"


def test_lfi_train_without_redis_says_so(tmp_path, data_root):
    from tests.support.processes import free_port

    spec = tmp_path / "spec.yaml"
    spec.write_text("dataset: small\n")
    env = {"LFI_DATA_ROOT": str(data_root), "LFI_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "services.cli", "train", str(spec)], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 1 and "unreachable" in result.stderr and "Traceback" not in result.stderr


def test_a_job_whose_message_was_lost_is_sent_again_and_runs_once(stack):
    """The record is written but the broker never got the message (the sender died in between)."""
    _, store, start_worker, _ = stack
    start_worker("w1")
    spec = JobSpec(dataset="small", model="vit-tiny", student="vit", epochs=1, batch_size=8, team="alpha")
    job_id = store.create(spec)["id"]  # no send_task: the message is lost
    record = _wait_status(store, job_id, {"succeeded", "failed"})
    assert record["status"] == "succeeded", record.get("error")
    assert record["starts"] == 1
    assert len(_events(store, job_id, "resent")) == 1


def test_a_redis_restart_mid_job_costs_at_most_the_steps_since_the_checkpoint(tmp_path, data_root):
    """Redis (append-only, as `lfi up` runs it) is killed -9 mid-job and restarted 3 s later: the worker
    waits it out and the job finishes, each epoch announced once, at most `checkpoint_every` steps redone."""
    from tests.support.processes import RedisServer

    (tmp_path / "redis").mkdir()
    redis_server = RedisServer(tmp_path / "redis", persistent=True).start()
    env = {"LFI_REDIS_URL": redis_server.url, "LFI_DATA_ROOT": str(data_root), "LFI_RUNS_ROOT": str(tmp_path / "runs"),
           "LFI_JOB_LEASE_S": "10", "LFI_JOB_RECLAIM_INTERVAL_S": "1", "HF_HUB_OFFLINE": "1"}
    worker = CeleryWorker("w1", env, tmp_path / "worker.log").start()
    settings = Settings(redis_url=redis_server.url, data_root=data_root, runs_root=tmp_path / "runs")
    store = JobStore.from_url(redis_server.url, patient=True)
    try:
        job_id = _submit(settings, store, dataset="medium", student="vit", checkpoint_every=5)
        wait_for(lambda: store.get(job_id).get("global_step", 0) >= 7, 180, "step 7")
        redis_server.kill()
        time.sleep(3)
        redis_server.start()
        record = _wait_status(store, job_id, {"succeeded", "failed", "cancelled"}, timeout_s=300)
        assert record["status"] == "succeeded", record.get("error")
        steps = [e["global_step"] for e in _events(store, job_id, "step")]
        assert set(steps) == set(range(1, 41))  # 20 steps an epoch, 2 epochs, none missing
        assert len(steps) - len(set(steps)) <= 5
        assert [e["epoch"] for e in _events(store, job_id, "epoch")] == [1, 2]
    finally:
        worker.stop()
        redis_server.kill()


def test_a_resumed_job_goes_ahead_of_the_jobs_waiting(stack):
    """New jobs wait at priority step 3; a reclaimed or re-sent one is sent at step 0 and is taken first."""
    from shared.celery_config import RESUME_PRIORITY, TRAIN_TASK

    settings, store, start_worker, _ = stack
    new = [_submit(settings, store, student="vit", epochs=1) for _ in range(2)]
    resumed = store.create(JobSpec(dataset="small", model="vit-tiny", student="vit", epochs=1, batch_size=8,
                                   team="alpha"))["id"]
    make_celery(settings).send_task(TRAIN_TASK, args=[resumed], priority=RESUME_PRIORITY)
    start_worker("w1")
    records = [_wait_status(store, job_id, {"succeeded", "failed"}) for job_id in [resumed, *new]]
    assert all(r["status"] == "succeeded" for r in records), [r.get("error") for r in records]
    assert records[0]["started_at"] < min(r["started_at"] for r in records[1:])
