"""The dashboard in a real browser (Debian's chromium through Playwright) on a running stack:
redis-server, a teacher on the tiny model, a Celery worker and the dashboard, all real processes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import TEAM_KEYS, CeleryWorker, ServiceProcess, wait_for, write_teams_file

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "test-screenshots"


@pytest.fixture
def running_stack(tmp_path, redis_server, teacher):
    from shared.detection_synth import generate_detection
    from shared.synth import generate

    data_root = tmp_path / "data"
    generate(data_root / "small", n_train_per_class=8, n_val_per_class=2, n_shifted_per_class=2, seed=0)
    generate_detection(data_root / "shapes", n_train=8, n_val=4, n_shifted=4, max_objects=2, seed=0)
    server = teacher()
    env = {"LFI_REDIS_URL": redis_server.url, "LFI_TEACHER_URL": server.url, "LFI_TEACHER_KEY": TEAM_KEYS["alpha"],
           "LFI_TEAMS_FILE": str(write_teams_file(tmp_path / "teams-dashboard.yaml")),
           "LFI_DATA_ROOT": str(data_root), "LFI_RUNS_ROOT": str(tmp_path / "runs"), "HF_HUB_OFFLINE": "1"}
    worker = CeleryWorker("browser", env, tmp_path / "worker.log").start()
    dashboard = ServiceProcess(["dashboard"], env, tmp_path / "dashboard.log", health="/healthz").start()
    yield dashboard.url
    dashboard.stop()
    worker.stop()


@pytest.fixture
def browser_page():
    """A headless chromium page, and the console errors and page errors it reports."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        yield page, problems
        browser.close()


def test_queue_watch_and_cancel_in_a_real_browser(running_stack, browser_page):
    url = running_stack
    page, problems = browser_page
    page.goto(url + "/")
    page.fill("#key", TEAM_KEYS["alpha"])
    page.click("#key-form button")
    page.wait_for_selector("#whoami:has-text('alpha')")

    # an invalid spec is refused with the field marked
    page.fill("#job-form [name=dataset]", "small")
    page.fill("#job-form [name=lr]", "-1")
    page.click("#queue")
    page.wait_for_selector("#form-errors:has-text('lr')")
    assert page.locator("#job-form [name=lr].invalid").count() == 1
    page.screenshot(path=str(SCREENSHOTS / "dashboard-invalid-spec.png"), full_page=True)

    # queue through the form
    page.fill("#job-form [name=lr]", "0.001")
    page.fill("#job-form [name=epochs]", "3")
    page.fill("#job-form [name=batch_size]", "8")
    page.fill("#job-form [name=checkpoint_every]", "2")
    page.fill("#job-form [name=eval_domains]", "shifted")
    page.click("#queue")
    page.wait_for_selector("#notice:has-text('queued job')")
    job_id = page.inner_text("#notice").split()[-1]

    # another job, queued behind it (one worker), cancelled from the table
    other = httpx.post(url + "/jobs", headers={"Authorization": f"Bearer {TEAM_KEYS['alpha']}"},
                       json={"dataset": "small", "epochs": 50, "batch_size": 8}).json()["id"]
    page.wait_for_selector(f"tr[data-job='{other}'] button.cancel")
    page.click(f"tr[data-job='{other}'] button.cancel")
    page.wait_for_selector(f"tr[data-job='{other}'][data-status='cancelled']", timeout=30_000)

    # the progress bar moves
    widths = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        width = page.eval_on_selector(f"tr[data-job='{job_id}'] .bar", "b => parseFloat(b.style.width) || 0")
        if not widths or width != widths[-1]:
            widths.append(width)
        if width >= 100:
            break
        time.sleep(0.2)
    assert len(widths) >= 3 and widths == sorted(widths) and widths[-1] >= 100, widths
    page.screenshot(path=str(SCREENSHOTS / "dashboard-jobs.png"), full_page=True)

    # the job's page: curves, gates and sample maps appear
    page.goto(f"{url}/jobs/{job_id}/view")
    page.wait_for_selector("#job-status:has-text('succeeded')", timeout=120_000)
    wait_for(lambda: page.evaluate("document.getElementById('loss').data?.[0]?.x?.length || 0") >= 12, 30,
             "the loss curve")
    wait_for(lambda: page.evaluate("document.getElementById('top1').data?.[1]?.y?.length || 0") == 3, 30,
             "the top-1 curve")
    assert page.evaluate("document.getElementById('gates').data?.length") == 2
    page.wait_for_selector("#samples canvas", timeout=30_000)
    assert page.locator("#samples .sample").count() >= 1
    _check_overlays_keep_the_image(page)
    page.screenshot(path=str(SCREENSHOTS / "dashboard-job.png"), full_page=True)

    # comparing two jobs on one chart (Figure 3 style)
    page.goto(url + "/")
    page.wait_for_selector(f"tr[data-job='{job_id}'] input[type=checkbox]")
    page.check(f"tr[data-job='{job_id}'] input[type=checkbox]")
    wait_for(lambda: page.evaluate("document.getElementById('compare').data?.length || 0") >= 1, 30,
             "the comparison chart")
    wait_for(lambda: "cache hit rate" in page.inner_text("#teacher-summary"), 30, "the teacher panel")
    page.screenshot(path=str(SCREENSHOTS / "dashboard-compare-teacher.png"), full_page=True)
    assert problems == []
    assert shutil.which("redis-server")


def test_a_detection_job_page_shows_coco_map_and_boxes(running_stack, browser_page):
    url = running_stack
    page, problems = browser_page
    job_id = httpx.post(url + "/jobs", headers={"Authorization": f"Bearer {TEAM_KEYS['alpha']}"},
                        json={"dataset": "shapes", "task": "detection", "epochs": 2, "batch_size": 4,
                              "eval_domains": ["shifted"]}).json()["id"]
    page.goto(f"{url}/jobs/{job_id}/view")
    page.fill("#key", TEAM_KEYS["alpha"])
    page.click("#key-form button")
    page.wait_for_selector("#job-status:has-text('succeeded')", timeout=300_000)
    # validation and `shifted`, AP and AP50 each, two epochs
    wait_for(lambda: page.evaluate("document.getElementById('top1').data?.length || 0") == 4, 30,
             "the mAP curves")
    names = page.evaluate("document.getElementById('top1').data.map((t) => t.name)")
    assert names == ["validation AP", "validation AP50", "shifted AP", "shifted AP50"]
    assert page.evaluate("document.getElementById('top1').data[0].y.length") == 2
    # the sample: boxes over the image, then each true object's teacher map and the query's attention
    page.wait_for_selector("#samples .sample canvas", timeout=30_000)
    captions = page.locator("#samples figcaption").all_inner_texts()
    assert any("true" in c and "found" in c for c in captions) and any("C_VLM" in c for c in captions)
    # the instance maps are overlays with their colour scale too
    assert page.locator("#samples .map-view .legend").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "dashboard-detection-job.png"), full_page=True)
    assert problems == []


# The sample maps of a job page, read back from the canvases: the C_VLM overlay and its legend are there,
# every map cell the overlay leaves transparent shows exactly the image's pixels (the "image" panel), and
# a map that is zero on its left half leaves that half of the picture untouched while tinting the rest.
OVERLAY_PIXELS = """async () => {
  const sample = samplesCache.samples[0], grid = samplesCache.grid;
  const figures = document.querySelectorAll("#samples .sample")[0].querySelectorAll("figure");
  const plain = figures[0].querySelector("canvas"), vlm = figures[1].querySelector(".map-view canvas");
  const pixels = (c) => c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const [base, over] = [pixels(plain), pixels(vlm)];
  const top = heatScale(sample.vlm);
  let transparent = 0, kept = 0;
  for (let i = 0; i < grid[0]; i++) for (let j = 0; j < grid[1]; j++) {
    if (heatColour(sample.vlm[i * grid[1] + j] / top)[3] > 0) continue;
    transparent++;
    const at = 4 * (Math.floor((i + 0.5) * 128 / grid[0]) * 128 + Math.floor((j + 0.5) * 128 / grid[1]));
    if ([0, 1, 2].every((k) => base[at + k] === over[at + k])) kept++;
  }
  const image = new Image();
  image.src = "data:image/png;base64," + sample.image;
  await image.decode();
  const made = grid[0] * grid[1];
  const values = Array.from({ length: made }, (_, n) => (n % grid[1] < grid[1] / 2 ? 0 : 1 + (n % grid[1])));
  const [a, b] = [document.createElement("canvas"), document.createElement("canvas")];
  for (const c of [a, b]) { c.width = 128; c.height = 128; }
  drawHeat(a, image, null, grid);
  drawHeat(b, image, values, grid);
  const [pa, pb] = [pixels(a), pixels(b)];
  let leftSame = true, rightChanged = 0;
  for (let y = 0; y < 128; y++) for (let x = 0; x < 128; x++) {
    const at = 4 * (y * 128 + x);
    const same = [0, 1, 2].every((k) => pa[at + k] === pb[at + k]);
    if (x < 64 && !same) leftSame = false;
    if (x >= 64 && !same) rightChanged++;
  }
  return { transparent, kept, leftSame, rightChanged,
           legends: figures[1].querySelectorAll(".legend").length,
           legendMax: Number(figures[1].querySelector(".legend").dataset.vmax), top };
}"""


def _check_overlays_keep_the_image(page) -> None:
    result = page.evaluate(OVERLAY_PIXELS)
    assert result["legends"] == 1 and result["legendMax"] == pytest.approx(result["top"])
    assert result["kept"] == result["transparent"], result
    assert result["leftSame"] and result["rightChanged"] > 64 * 64 // 2, result


def test_the_jobs_page_compares_the_jobs_queued_together_without_ticking(running_stack, browser_page):
    url = running_stack
    page, problems = browser_page
    auth = {"Authorization": f"Bearer {TEAM_KEYS['alpha']}"}
    common = {"dataset": "small", "epochs": 2, "batch_size": 8, "eval_domains": ["shifted"], "group": "pair-1"}
    ids = [httpx.post(url + "/jobs", headers=auth, json={**common, "student": student}).json()["id"]
           for student in ("vit", "ivit")]
    wait_for(lambda: all(httpx.get(f"{url}/jobs/{i}", headers=auth).json()["status"] == "succeeded" for i in ids),
             300, "both jobs", interval_s=1)
    page.goto(url + "/")
    page.fill("#key", TEAM_KEYS["alpha"])
    page.click("#key-form button")
    page.wait_for_selector(f"tr[data-job='{ids[0]}']")
    assert page.locator("#jobs input[type=checkbox]:checked").count() == 0
    _check_the_colour_scale_is_the_pngs(page)

    def names():
        return page.evaluate("(document.getElementById('compare').data || []).map((t) => t.name)")

    wanted = {f"ViT · {ids[0][:6]} val", f"ViT · {ids[0][:6]} shifted",
              f"I-ViT · {ids[1][:6]} val", f"I-ViT · {ids[1][:6]} shifted"}
    wait_for(lambda: set(names()) == wanted, 30, "both jobs' val and shifted curves, nothing ticked")
    assert "group pair-1" in page.inner_text("#compare-what")
    assert page.evaluate("document.getElementById('compare').data.every((t) => t.y.length === 2)")
    assert page.inner_text(f"tr[data-job='{ids[0]}']").count("pair-1") == 1  # the group is shown in the table
    page.screenshot(path=str(SCREENSHOTS / "dashboard-compare-default.png"), full_page=True)

    # ticking still chooses
    page.check(f"tr[data-job='{ids[1]}'] input[type=checkbox]")
    wait_for(lambda: all(ids[1][:6] in n for n in names()) and len(names()) == 2, 30, "only the ticked job")
    assert problems == []


def _check_the_colour_scale_is_the_pngs(page) -> None:
    """heat.js draws with the colours `lfi teacher demo`'s PNGs use (overlay.py): one scale, two sides."""
    import numpy as np

    from services.teacher.engine.overlay import heat_rgba

    levels = [0.0, 0.05, 0.1, 0.2, 1 / 3, 0.5, 0.8, 1.0]
    drawn = np.array(page.evaluate(f"{levels}.map((v) => heatColour(v))"))
    written = heat_rgba(np.array(levels), vmax=1.0).astype(float)
    assert np.abs(drawn[:, :3] - written[:, :3]).max() <= 1
    assert np.abs(255 * drawn[:, 3] - written[:, 3]).max() <= 1
    flat = [1 / 64] * 64
    assert page.evaluate(f"heatScale({flat})") == pytest.approx(3 / 64)
