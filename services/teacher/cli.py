"""`lfi teacher ...`: build the offline checkpoint, extract maps, run the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.teacher.settings import TeacherSettings, help_for, override_help

if TYPE_CHECKING:
    from services.teacher.engine.extraction import InteractionEngine
    from services.teacher.engine.extraction_settings import ExtractionSettings
    from shared.teams import TeamDirectory

teacher_app = typer.Typer(no_args_is_help=True, help="The VLM teacher: interaction maps from LLaVA-1.5.")
console = Console(stderr=True)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@teacher_app.command("build-tiny")
def build_tiny(
    out_dir: Path = typer.Argument(..., help="Folder to write the checkpoint to."),
    preset: str = typer.Option("tiny", help="tiny | tiny-gqa | cpu-bench | llava-1.5-7b-geometry | "
                        "llava-1.5-7b-vocab (the real tokenizer, processor and chat template, tiny random weights)"),
    seed: int = typer.Option(0, help="Weights and everything else follow from this seed."),
    device: str = typer.Option("cpu", help="Build straight onto this device (cuda for the 7B geometry)."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
) -> None:
    """Write an offline LLaVA-1.5-architecture checkpoint that from_pretrained loads."""
    from services.teacher.engine.loading import parse_dtype
    from services.teacher.tiny.build import PRESETS, build_tiny_checkpoint

    if preset not in PRESETS:
        _fail(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    with console.status(f"building {preset} checkpoint in {out_dir} ..."):
        path = build_tiny_checkpoint(out_dir, preset, seed=seed, device=device, dtype=parse_dtype(dtype))
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    console.print(f"[green]built[/green] {path} ({size:.1f} MB)")


@teacher_app.command("train-tiny")
def train_tiny(
    out_dir: Path = typer.Argument(..., help="Folder to write the trained checkpoint to."),
    seed: int = typer.Option(0, help="Weights and prompt variants follow from this seed."),
    data_seed: int = typer.Option(1000, help="Synthetic image stream the teacher trains on."),
    vision_steps: int = typer.Option(None, help="Stage-1 steps of the vision tower (default: the shipped one's)."),
    steps: int = typer.Option(None, help="Stage-2 steps answering (default: the shipped checkpoint's)."),
    batch_size: int = typer.Option(None, help="Images per step (default: the shipped checkpoint's)."),
    lr: float = typer.Option(None, help="Peak learning rate (default: the shipped checkpoint's)."),
    measure: int = typer.Option(64, help="Held-out images to score the maps on (0: skip)."),
) -> None:
    """Train the tiny LLaVA-architecture teacher on the synthetic shapes (CPU, minutes)."""
    from dataclasses import replace

    from services.teacher.tiny.train import TinyTrainConfig, finish_checkpoint, train_tiny_teacher

    given = {k: v for k, v in {"steps": steps, "vision_steps": vision_steps, "batch_size": batch_size,
                               "lr": lr}.items() if v is not None}
    try:
        config = replace(TinyTrainConfig(seed=seed, data_seed=data_seed), **given)
    except ValueError as exc:
        _fail(str(exc))
    if measure < 0:
        _fail(f"--measure must be >= 0, got {measure}")
    # fail now, not after minutes of training, when the checkpoint cannot be written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".lfi-write-test").touch()
        (out_dir / ".lfi-write-test").unlink()
    except OSError as exc:
        _fail(f"cannot write the checkpoint to {out_dir}: {exc}")
    with Progress(console=console) as progress:
        tasks = {"vision": progress.add_task("stage 1: vision tower", total=config.vision_steps),
                 "answer": progress.add_task("stage 2: answers", total=config.steps)}

        def on_step(stage: str, step: int, loss: float) -> None:
            progress.update(tasks[stage], advance=1, description=f"stage {1 if stage == 'vision' else 2}: "
                            f"{'vision tower' if stage == 'vision' else 'answers'} (loss {loss:.3f})")

        report = train_tiny_teacher(out_dir, config, on_step=on_step)
        if measure:
            progress.add_task(f"scoring maps on {measure} held-out images", total=None)
            finish_checkpoint(report, images=measure)
    size = sum(f.stat().st_size for f in out_dir.iterdir()) / 1e6
    console.print(f"[green]trained[/green] {out_dir} ({size:.1f} MB) in {report.seconds:.0f} s; "
                  f"answers on held-out images: {json.dumps(report.evaluation)}")


SYSTEM_PROMPT_HELP = ("llava (LLaVA-1.5's own vicuna_v1 system prompt) | none (default: the checkpoint's "
                      "recommendation, else llava).")


def _extraction(model_dir: str, layers: str | None, rows: str | None,
                head_reduce: str | None, system_prompt: str | None = None) -> ExtractionSettings:
    """The checkpoint's recommended extraction settings with the options given on the command line."""
    from dataclasses import replace

    from services.teacher.engine.extraction_settings import recommended_settings

    given: dict = {}
    if layers:
        given["layers"] = tuple(int(v) for v in layers.split(","))
    if rows is not None:
        given["rows"] = rows
    if head_reduce is not None:
        given["head_reduce"] = head_reduce
    if system_prompt is not None:
        given["system_prompt"] = system_prompt
    return replace(recommended_settings(model_dir), **given)


def _parse_box(text: str):
    from shared.schemas import Box

    try:
        coords, label = text.split(":", 1)
        x0, y0, x1, y1 = (float(v) for v in coords.split(","))
        return Box(xyxy=(x0, y0, x1, y1), label=label)
    except ValueError as exc:
        _fail(f"box {text!r} must look like x0,y0,x1,y1:label ({exc})")


def _parse_grid(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        _fail(f"grid {text!r} must look like 14x14")
    return h, w


@teacher_app.command("extract")
def extract(
    images: list[Path] = typer.Argument(..., help="Image files."),
    model: str = typer.Option(None, help="Hub id, folder or builtin:<preset> (default: LFI_TEACHER_MODEL)."),
    task: str = typer.Option("classification", help="classification | detection | segmentation"),
    label: str = typer.Option(None, help="Force the foreground word."),
    background: str = typer.Option(None, help="Force the background word too (with --label or boxes): "
                                   "nothing is generated, one forward per map."),
    vocabulary: str = typer.Option(None, help="Comma-separated words the VLM chooses the foreground from."),
    box: list[str] = typer.Option(None, help="x0,y0,x1,y1:label (dense tasks; repeat for more boxes)."),
    prompt: str = typer.Option(None, help="Prompt template id (default per task)."),
    grid: str = typer.Option(None, help="Resample to HxW, e.g. 14x14."),
    layers: str = typer.Option(None, help="Comma-separated text layers to average (default: the checkpoint's "
                               "recommendation, else all)."),
    rows: str = typer.Option(None, help="word | predicting: whose attention row stands for a word (default: "
                             "the checkpoint's recommendation, else word)."),
    out: Path = typer.Option(Path("maps"), help="Writes <name>.npy, <name>-map.png and results.jsonl here."),
    batch_size: int = typer.Option(TeacherSettings.defaults().max_batch_size, help="Sequences per forward pass."),
    device: str = typer.Option(TeacherSettings.defaults().device),
    dtype: str = typer.Option(TeacherSettings.defaults().dtype),
    capture: str = typer.Option(None, help=help_for("capture")),
    system_prompt: str = typer.Option(None, help=SYSTEM_PROMPT_HELP),
) -> None:
    """Compute interaction maps for image files and save them with overlays."""
    engine = _extract_engine(model, layers, rows, batch_size=batch_size, device=device, dtype=dtype,
                             capture=capture, system_prompt=system_prompt)
    out.mkdir(parents=True, exist_ok=True)
    fields = {"task": task, "label": label, "background": background, "prompt": prompt,
              "vocabulary": [w.strip() for w in vocabulary.split(",")] if vocabulary else None,
              "boxes": [_parse_box(b) for b in box or []], "grid": _parse_grid(grid)}
    table = Table("image", "answer", "status", "degenerate")
    with Progress(console=console) as progress, (out / "results.jsonl").open("a") as log:
        bar = progress.add_task("extracting", total=len(images))
        for path in images:
            table.add_row(*_extract_one(engine, path, fields, out, log))
            progress.advance(bar)
    Console().print(table)


def _extract_engine(model: str | None, layers: str | None, rows: str | None, *, batch_size: int, device: str,
                    dtype: str, capture: str | None = None, system_prompt: str | None = None) -> InteractionEngine:
    """The engine `extract` runs: the model resolved, its recommended settings overridden by the options."""
    from services.teacher.engine.extraction import InteractionEngine
    from services.teacher.tiny.resolve import resolve_model
    from shared.errors import LfiError
    from shared.settings import get_settings

    settings = get_settings()
    try:
        model_dir = resolve_model(model or settings.teacher_model, settings.cache_dir)
        return InteractionEngine.from_pretrained(
            model_dir, device=device, dtype=dtype, settings=_extraction(model_dir, layers, rows, None, system_prompt),
            max_batch_size=batch_size, cache_dir=settings.cache_dir, capture=capture,
        )
    except LfiError as exc:
        _fail(exc.message)
    except ValueError:
        _fail(f"--layers {layers!r} must be comma-separated integers")


def _extract_one(engine: InteractionEngine, path: Path, fields: dict, out: Path,
                 log: IO[str]) -> tuple[str, str, str, str]:
    """Map one image file and save it; a file that fails is a row of the table, not the end of the run."""
    from services.teacher.engine.extraction import InteractionRequest
    from services.teacher.engine.overlay import overlay_with_scale
    from shared.errors import LfiError
    from shared.images import decode_image

    try:
        image = decode_image(path.read_bytes())
        result = engine.extract(InteractionRequest(image=image, **fields))
    except (LfiError, OSError) as exc:
        message = exc.message if isinstance(exc, LfiError) else str(exc)
        return path.name, f"[red]{message}[/red]", "error", "-"
    import numpy as np

    np.save(out / f"{path.stem}.npy", result.map)
    overlay_with_scale(image, result.map).save(out / f"{path.stem}-map.png")
    log.write(json.dumps({"image": str(path), "answer": result.answer,
                          "status": result.answer_status.value, "degenerate": result.degenerate,
                          "model": result.model.id, "revision": result.model.revision,
                          "prompt": result.prompt, "question": result.question,
                          "shape": list(result.map.shape)}) + "\n")
    return path.name, result.answer, result.answer_status.value, str(result.degenerate)


@teacher_app.command("demo")
def demo(
    out: Path = typer.Option(Path("artifacts/demo"), help="Where images, maps and overlays go."),
    n_images: int = typer.Option(8, help="How many synthetic images."),
) -> None:
    """Build the tiny teacher if needed, then show where it looks on synthetic images."""
    from services.teacher.tiny.demo import run_demo
    from services.teacher.tiny.resolve import resolve_model
    from shared.errors import LfiError
    from shared.settings import get_settings

    settings = get_settings()
    try:
        with console.status(f"preparing teacher {settings.teacher_model} ..."):
            model_dir = resolve_model(settings.teacher_model, settings.cache_dir)
        with Progress(console=console) as progress:
            bar = progress.add_task("interaction maps", total=n_images)
            rows = run_demo(model_dir, out, n_images=n_images, progress=lambda: progress.advance(bar))
    except LfiError as exc:
        _fail(exc.message)
    table = Table("image", "truth", "VLM answer", "status", "map on shape", "shape area", "ms")
    for row in rows:
        table.add_row(row["image"], row["truth"], row["answer"], row["status"], f"{row['mass_on_shape']:.2f}",
                      f"{row['shape_area']:.2f}", str(row["compute_ms"]))
    Console().print(table)
    console.print(f"overlays (with their colour scale) and maps in [bold]{out}[/bold], all on one page: "
                  f"[bold]{out / 'index.html'}[/bold] (model {model_dir})")
    note = _builtin_teacher_note(settings.teacher_model)
    if note:
        console.print(f"[yellow]note:[/yellow] {note}")


def _builtin_teacher_note(spec: str) -> str | None:
    """What a demo on a built-in teacher does not show, so nobody mistakes it for LLaVA-1.5's maps."""
    from services.teacher.tiny.build import PRESETS
    from services.teacher.tiny.resolve import TRAINED_SPEC

    if spec == TRAINED_SPEC:
        return ("the built-in teacher is a tiny LLaVA trained on these synthetic shapes only; set "
                "LFI_TEACHER_MODEL to a LLaVA-1.5 checkpoint (e.g. llava-hf/llava-1.5-7b-hf) for real images.")
    if spec.removeprefix("builtin:") in PRESETS:
        return ("this built-in teacher has random weights: the machinery is real, its answers and maps are "
                "not meaningful. builtin:tiny-synth is trained.")
    return None


@teacher_app.command("serve")
def serve(
    # Tunables default to None: an option not given keeps the value of LFI_TEACHER_* or TeacherSettings.
    host: str | None = typer.Option(None, help=override_help("host")),
    port: int | None = typer.Option(None, help=override_help("port")),
    model: str = typer.Option(None, help="Hub id, folder or builtin:<preset> (default: LFI_TEACHER_MODEL)."),
    device: str | None = typer.Option(None, help=override_help("device")),
    dtype: str | None = typer.Option(None, help=override_help("dtype")),
    max_batch_size: int | None = typer.Option(None, help=override_help("max_batch_size")),
    max_wait_ms: float | None = typer.Option(None, help=override_help("max_wait_ms")),
    max_queue: int | None = typer.Option(None, help=override_help("max_queue_per_team")),
    answer_backend: str | None = typer.Option(None, help=override_help("answer_backend")),
    max_pixels: int | None = typer.Option(None, help=override_help("max_pixels")),
    max_body_mb: int | None = typer.Option(None, help=override_help("max_body_mb")),
    request_timeout_s: float | None = typer.Option(None, help=override_help("request_timeout_s")),
    graceful_shutdown_s: float | None = typer.Option(None, help=override_help("graceful_shutdown_s")),
    capture: str | None = typer.Option(None, help=override_help("capture")),
    layers: str = typer.Option(None, help="Comma-separated text layers averaged into maps (default: the "
                               "checkpoint's recommendation, else all)."),
    rows: str = typer.Option(None, help="word | predicting (default: the checkpoint's recommendation, else word)."),
    head_reduce: str = typer.Option(None, help="mean | max over heads (default mean)."),
    system_prompt: str = typer.Option(None, help=SYSTEM_PROMPT_HELP),
) -> None:
    """Serve /interactions over HTTP (needs LFI_TEAMS_FILE; Redis at LFI_REDIS_URL, optional)."""
    import uvicorn
    from pydantic import ValidationError

    from services.teacher.serving.app import create_app
    from services.teacher.serving.state import TeacherConfig
    from services.teacher.tiny.resolve import resolve_model
    from shared.errors import LfiError
    from shared.settings import get_settings

    given = {"host": host, "port": port, "device": device, "dtype": dtype, "max_batch_size": max_batch_size,
             "max_wait_ms": max_wait_ms, "max_queue_per_team": max_queue, "answer_backend": answer_backend,
             "max_pixels": max_pixels, "max_body_mb": max_body_mb, "request_timeout_s": request_timeout_s,
             "graceful_shutdown_s": graceful_shutdown_s, "capture": capture}
    try:  # keyword arguments win over the environment
        tunables = TeacherSettings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    settings = get_settings()
    teams = _teams(settings.teams_file)
    from services.teacher.engine.loading import check_model_reference, parse_dtype, resolve_device

    try:
        model_dir = resolve_model(model or settings.teacher_model, settings.cache_dir)
        check_model_reference(model_dir)
        parse_dtype(resolve_device(tunables.device, tunables.dtype)[1])
    except (LfiError, ValueError) as exc:
        _fail(getattr(exc, "message", str(exc)))
    try:
        extraction = _extraction(model_dir, layers, rows, head_reduce, system_prompt)
    except (LfiError, ValueError) as exc:
        _fail(f"--layers/--rows/--head-reduce/--system-prompt: {getattr(exc, 'message', exc)}")
    config = TeacherConfig(model=model_dir, redis_url=settings.redis_url, teams=teams, settings=tunables,
                           map_ttl_s=settings.map_ttl_s or None, extraction=extraction, cache_dir=settings.cache_dir)
    uvicorn.run(create_app(config), host=tunables.host, port=tunables.port, log_level="info",
                timeout_graceful_shutdown=tunables.graceful_shutdown_s)


def _teams(teams_file: Path | None) -> TeamDirectory:
    from shared.teams import TeamDirectory

    if teams_file is None:
        _fail("set LFI_TEAMS_FILE to a teams YAML file (see README; `lfi teacher team-key NAME` makes an entry)")
    try:
        return TeamDirectory.load(teams_file)
    except ValueError as exc:
        _fail(f"teams file {teams_file}: {exc}")


@teacher_app.command("team-key")
def team_key(name: str = typer.Argument(..., help="Team name ([a-z0-9-]+)."),
             weight: float = 1.0, rate_per_s: float = 50.0, daily_quota: int = 100_000) -> None:
    """Make a new bearer key and print the teams-file entry that holds its hash."""
    import secrets

    from shared.teams import Team, hash_key

    key = "lfi_" + secrets.token_urlsafe(24)
    try:
        team = Team(name=name, key_sha256=hash_key(key), weight=weight, rate_per_s=rate_per_s,
                    daily_quota=daily_quota)
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"bearer key for {name} (shown once, store it): [bold]{key}[/bold]")
    import yaml

    print(yaml.safe_dump({"teams": [team.model_dump()]}, sort_keys=False).rstrip())
