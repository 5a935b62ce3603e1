"""Dashboard REST against a real redis-server and a real uvicorn process, with jobs in several states."""

from __future__ import annotations

import httpx
import pytest

from shared.job_spec import JobSpec
from shared.jobs import JobStatus, JobStore
from tests.support.processes import TEAM_KEYS, ServiceProcess, write_teams_file

pytestmark = pytest.mark.slow


def _auth(team: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TEAM_KEYS[team]}"}


@pytest.fixture
def dashboard(tmp_path, redis_server):
    from shared.synth import generate

    data_root = tmp_path / "data"
    generate(data_root / "synth", n_train_per_class=2, n_val_per_class=1, n_shifted_per_class=1, seed=0)
    env = {"LFI_REDIS_URL": redis_server.url, "LFI_TEAMS_FILE": str(write_teams_file(tmp_path / "teams.yaml")),
           "LFI_DATA_ROOT": str(data_root), "LFI_RUNS_ROOT": str(tmp_path / "runs"),
           "LFI_TEACHER_URL": "http://127.0.0.1:9"}  # no teacher: /teacher/stats must say so
    server = ServiceProcess(["dashboard"], env, tmp_path / "dashboard.log", health="/healthz").start()
    yield server, JobStore.from_url(redis_server.url)
    server.stop()


def _seed_jobs(store: JobStore) -> dict[str, str]:
    """alpha: queued, running (with metrics), succeeded; beta: failed."""
    ids = {}
    for name, team in (("queued", "alpha"), ("running", "alpha"), ("succeeded", "alpha"), ("failed", "beta")):
        ids[name] = store.create(JobSpec(dataset="synth", team=team))["id"]
    store.set_status(ids["running"], JobStatus.running)
    store.update(ids["running"], progress=0.5, global_step=2)
    for step in (1, 2):
        store.event(ids["running"], {"type": "step", "global_step": step, "task_loss": 1.0 / step, "align_loss": 0.5})
    store.event(ids["running"], {"type": "epoch", "epoch": 1, "val_top1": 0.4, "task_loss": 0.7})
    store.set_status(ids["succeeded"], JobStatus.running)
    store.set_status(ids["succeeded"], JobStatus.succeeded, metrics={"val_top1": 0.9})
    store.set_status(ids["failed"], JobStatus.failed, error="ValueError: broken")
    return ids


def test_a_team_sees_its_own_jobs_and_an_admin_sees_all(dashboard):
    server, store = dashboard
    ids = _seed_jobs(store)
    alpha = httpx.get(server.url + "/jobs", headers=_auth("alpha")).json()["jobs"]
    assert {j["id"] for j in alpha} == {ids["queued"], ids["running"], ids["succeeded"]}
    assert {j["status"] for j in alpha} == {"queued", "running", "succeeded"}
    running = next(j for j in alpha if j["id"] == ids["running"])
    assert running["progress"] == 0.5 and running["eta_s"] is not None
    admin = httpx.get(server.url + "/jobs", headers=_auth("admin")).json()["jobs"]
    assert {j["id"] for j in admin} == set(ids.values())
    assert httpx.get(server.url + f"/jobs/{ids['failed']}", headers=_auth("alpha")).status_code == 404
    failed = httpx.get(server.url + f"/jobs/{ids['failed']}", headers=_auth("beta")).json()
    assert failed["status"] == "failed" and failed["error"] == "ValueError: broken"
    metrics = httpx.get(server.url + f"/jobs/{ids['running']}/metrics", headers=_auth("alpha")).json()
    assert [s["global_step"] for s in metrics["steps"]] == [1, 2] and metrics["epochs"][0]["val_top1"] == 0.4


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer nope"}, 401),
                                                 ({"Authorization": "Basic abc"}, 401)])
def test_every_job_route_needs_a_team_key(dashboard, headers, status):
    server, _ = dashboard
    for method, path in (("GET", "/jobs"), ("GET", "/jobs/abc"), ("POST", "/jobs"), ("POST", "/jobs/abc/cancel"),
                         ("GET", "/teacher/stats")):
        response = httpx.request(method, server.url + path, headers=headers, json={})
        assert response.status_code == status, (method, path)
        assert response.json()["error"]["code"] == "unauthorized"


def test_queue_a_job_for_your_own_team(dashboard):
    server, store = dashboard
    response = httpx.post(server.url + "/jobs", headers=_auth("alpha"),
                          json={"dataset": "synth", "student": "vit", "epochs": 1, "team": "beta"})
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["status"] == "queued" and record["team"] == "alpha"  # a team cannot queue for another
    assert store.get(record["id"])["spec"]["student"] == "vit"
    admin = httpx.post(server.url + "/jobs", headers=_auth("admin"), json={"dataset": "synth", "team": "beta"})
    assert admin.status_code == 201 and admin.json()["team"] == "beta"


def test_the_recipe_goes_into_the_queued_spec(dashboard):
    server, store = dashboard
    recipe = {"weight_decay": 0.1, "warmup_steps": 0, "align_rows": "mean", "align_heads": "each",
              "kl_direction": "model-first", "kl_smoothing": 0.1, "align_layers": [1, 3], "min_crop_mass": 0.5}
    response = httpx.post(server.url + "/jobs", headers=_auth("alpha"), json={"dataset": "synth", **recipe})
    assert response.status_code == 201, response.text
    spec = store.get(response.json()["id"])["spec"]
    assert {name: spec[name] for name in recipe} == recipe


@pytest.mark.parametrize(("body", "field"), [
    ({"dataset": "synth", "lr": -1}, "lr"),
    ({"dataset": "synth", "model": "vit-huge"}, "model"),
    ({"dataset": "synth", "colour": "red"}, "colour"),
    ({"dataset": "synth", "epochs": "many"}, "epochs"),
    ({"dataset": "synth", "kl_direction": "model-first"}, "kl_smoothing"),
    ({"dataset": "synth", "kl_direction": "backwards"}, "kl_direction"),
    ({"dataset": "synth", "align_layers": [0, 9]}, "align_layers"),
    ({"dataset": "synth", "align_rows": "all"}, "align_rows"),
    ({"dataset": "synth", "weight_decay": -1}, "weight_decay"),
    ({"dataset": "synth", "warmup_steps": 1.5}, "warmup_steps"),
    ({"dataset": "synth", "min_crop_mass": 2}, "min_crop_mass"),
    ({"dataset": "synth", "freeze": "maybe"}, "freeze"),
])
def test_an_invalid_spec_is_refused_with_the_field_that_is_wrong(dashboard, body, field):
    server, store = dashboard
    response = httpx.post(server.url + "/jobs", headers=_auth("alpha"), json=body)
    assert response.status_code == 422
    assert field in response.json()["error"]["fields"]
    assert store.list() == []


@pytest.mark.parametrize(("dataset", "message"), [("../etc", "outside the data root"), ("/etc", "relative"),
                                                  ("nothing-here", "not a folder")])
def test_a_dataset_outside_the_data_root_is_refused(dashboard, dataset, message):
    server, store = dashboard
    response = httpx.post(server.url + "/jobs", headers=_auth("alpha"), json={"dataset": dataset})
    assert response.status_code == 422 and message in response.json()["error"]["message"]
    assert store.list() == []


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"dataset": "synth", "init": "../elsewhere"}, "init", "outside the data root"),
    ({"dataset": "synth", "init": "/etc"}, "init", "relative"),
    ({"dataset": "synth", "init": "builtin:vit-huge"}, "init", "builtin:vit-tiny-synth"),
    ({"dataset": "synth", "map_store": "no-such-store"}, "map_store", "not a folder"),
    ({"dataset": "synth", "map_store": "synth"}, "map_store", "no index.json"),
    ({"dataset": "synth", "eval_domains": ["nope"]}, "eval_domains", "eval domain"),
    ({"dataset": "init-and-map_store-missing"}, "dataset", "not a folder"),  # its name misleads no guess
    ({"dataset": "bad\x00name"}, "dataset", "NUL"),
])
def test_a_bad_path_is_reported_under_its_own_field(dashboard, body, field, message):
    server, store = dashboard
    response = httpx.post(server.url + "/jobs", headers=_auth("alpha"), json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert list(error["fields"]) == [field] and message in error["fields"][field] and message in error["message"]
    dry_run = httpx.post(server.url + "/jobs/validate", headers=_auth("alpha"), json=body).json()
    assert dry_run["valid"] is False and list(dry_run["fields"]) == [field]
    assert store.list() == []


def test_cross_site_and_non_json_mutations_are_refused(dashboard):
    server, store = dashboard
    forged = httpx.post(server.url + "/jobs", headers={**_auth("alpha"), "Origin": "https://evil.example"},
                        json={"dataset": "synth"})
    assert forged.status_code == 403
    form = httpx.post(server.url + "/jobs", headers=_auth("alpha"), data={"dataset": "synth"})
    assert form.status_code == 415
    for body in (b"[1, 2]", b"{not json"):
        bad = httpx.post(server.url + "/jobs", headers={**_auth("alpha"), "Content-Type": "application/json"},
                         content=body)
        assert bad.status_code == 422
    ids = _seed_jobs(store)
    cancel = httpx.post(server.url + f"/jobs/{ids['queued']}/cancel",
                        headers={**_auth("alpha"), "Origin": "https://evil.example"})
    assert cancel.status_code == 403 and store.get(ids["queued"])["status"] == "queued"


def test_cancel_a_queued_job_and_a_finished_one_stays_finished(dashboard):
    server, store = dashboard
    ids = _seed_jobs(store)
    response = httpx.post(server.url + f"/jobs/{ids['queued']}/cancel", headers=_auth("alpha"))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    done = httpx.post(server.url + f"/jobs/{ids['succeeded']}/cancel", headers=_auth("alpha"))
    assert done.json()["status"] == "succeeded"
    running = httpx.post(server.url + f"/jobs/{ids['running']}/cancel", headers=_auth("alpha")).json()
    assert running["status"] == "running" and store.cancel_requested(ids["running"])  # the worker stops it
    assert httpx.post(server.url + f"/jobs/{ids['failed']}/cancel", headers=_auth("alpha")).status_code == 404


def test_pages_static_files_and_a_missing_teacher(dashboard):
    server, _ = dashboard
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/static/plotly.min.js" in page.text
    assert "<script>" not in httpx.get(server.url + "/jobs/%3Cscript%3E/view").text  # the id is escaped
    plotly = httpx.get(server.url + "/static/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert "javascript" in plotly.headers["content-type"]
    assert httpx.get(server.url + "/static/../app.py").status_code == 404
    assert httpx.get(server.url + "/static/nope.js").status_code == 404
    stats = httpx.get(server.url + "/teacher/stats", headers=_auth("alpha"))
    assert stats.status_code == 503 and "unreachable" in stats.json()["error"]["message"]
    assert stats.headers["retry-after"] == "5"
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"


def test_validate_is_a_dry_run_that_names_the_fields(dashboard):
    server, store = dashboard
    bad = httpx.post(server.url + "/jobs/validate", headers=_auth("alpha"), json={"dataset": "../x", "lr": -1})
    assert bad.status_code == 200 and bad.json()["valid"] is False and "lr" in bad.json()["fields"]
    outside = httpx.post(server.url + "/jobs/validate", headers=_auth("alpha"), json={"dataset": "../x"}).json()
    assert outside["valid"] is False and "outside the data root" in outside["fields"]["dataset"]
    good = httpx.post(server.url + "/jobs/validate", headers=_auth("alpha"), json={"dataset": "synth"}).json()
    assert good["valid"] is True and good["spec"]["team"] == "alpha"
    assert store.list() == []  # nothing queued


def test_redis_down_is_a_503_not_a_traceback(dashboard, redis_server):
    server, _ = dashboard
    redis_server.kill()
    response = httpx.get(server.url + "/jobs", headers=_auth("alpha"), timeout=30)
    assert response.status_code == 503 and "unreachable" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "5"
    assert httpx.get(server.url + "/readyz", timeout=30).status_code == 503
    assert httpx.get(server.url + "/healthz").status_code == 200
