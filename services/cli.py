"""`lfi`: one command line for every service. Heavy imports happen inside commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from services.dashboard.cli import dashboard
from services.student.data_cli import data_app
from services.student.jobs_cli import train, worker
from services.student.pretrain_cli import student_app
from services.teacher.cli import teacher_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="lfi: learning from VLM interactions.")
app.add_typer(teacher_app, name="teacher")
app.add_typer(data_app, name="data")
app.add_typer(student_app, name="student")
app.command("worker")(worker)
app.command("train")(train)
app.command("dashboard")(dashboard)


@app.command("maps")
def maps(
    dataset: Path = typer.Argument(..., help="A dataset the student reads (its root, or one folder of class "
                                            "folders); TinyImageNet's words.txt gives the class words."),
    export: Path = typer.Option(None, help="Also write a portable map store here."),
    grid: str = typer.Option(None, help="Resample to HxW, e.g. 14x14."),
    task: str = typer.Option("classification"),
    prompt: str = typer.Option(None, help="Prompt template id (default per task)."),
    vocabulary_from_folders: bool = typer.Option(False, help="Let the VLM choose among the class words "
                                                             "(no forced label; the student forces it)."),
    batch_size: int = typer.Option(32, help="Images per request to the teacher."),
    teacher_url: str = typer.Option(None, help="Default: LFI_TEACHER_URL."),
) -> None:
    """Precompute a dataset's maps through the teacher, asked as the student asks (bulk priority, resumable)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.student.data import DatasetError
    from services.student.precompute import MapsOptions, dataset_images, precompute_dataset
    from shared.settings import get_settings
    from shared.teacher_client import TeacherClient, TeacherUnavailable

    console = Console(stderr=True)
    parsed_grid = None
    if grid:
        try:
            parsed_grid = tuple(int(v) for v in grid.lower().split("x"))
        except ValueError:
            console.print(f"[red]error:[/red] grid {grid!r} must look like 14x14")
            raise typer.Exit(2) from None
    try:
        listing = dataset_images(dataset)
    except DatasetError as exc:
        console.print(f"[red]error:[/red] {exc}; give a dataset root or a folder of class folders")
        raise typer.Exit(2) from None
    settings = get_settings()
    options = MapsOptions(task=task, prompt=prompt, grid=parsed_grid, batch_size=batch_size,
                          choose=vocabulary_from_folders)
    client = TeacherClient(teacher_url or settings.teacher_url, settings.teacher_key)
    columns = (TextColumn("maps"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("maps", total=len(listing.images))
            report = precompute_dataset(client, dataset, options, export=export, listing=listing,
                                        progress=lambda n: progress.advance(bar, n))
    except (TeacherUnavailable, RuntimeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        client.close()
    summary = {"images": report.images, "computed": report.computed, "cached": report.cached,
               "degenerate": report.degenerate, "unlabelled": report.unlabelled,
               "unreadable": len(report.unreadable), "failed": len(report.failed), "exported": report.exported}
    print(json.dumps(summary))
    for rel, why in report.failed.items():
        console.print(f"[yellow]failed[/yellow] {rel}: {why}")


@app.command("up")
def up(
    demo: bool = typer.Option(False, help="Build what is missing, make the synthetic set, queue a ViT and an I-ViT."),
    host: str = typer.Option("127.0.0.1"),
    teacher_port: int = typer.Option(8100),
    dashboard_port: int = typer.Option(8300),
    workers: int = typer.Option(1, help="Worker processes (one per GPU in production)."),
    concurrency: int = typer.Option(2, help="Jobs at once per worker."),
    demo_epochs: int = typer.Option(8, help="Epochs of each demo job."),
    demo_size: int = typer.Option(100, help="Synthetic training images per class."),
    exit_when_done: bool = typer.Option(False, help="With --demo: stop everything once both jobs have ended."),
) -> None:
    """Everything locally: Redis (its own, append-only, under runs/redis; or LFI_REDIS_URL's), teacher, worker,
    dashboard."""
    from services.launcher import up as launch

    raise typer.Exit(launch(host=host, teacher_port=teacher_port, dashboard_port=dashboard_port, workers=workers,
                            concurrency=concurrency, demo=demo, demo_epochs=demo_epochs, demo_size=demo_size,
                            exit_when_done=exit_when_done))


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format='{"ts": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s", "msg": "%(message)s"}',
    )


if __name__ == "__main__":
    app()
