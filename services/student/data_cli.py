"""`lfi data ...`: data sets for the student (the synthetic shape-on-texture set)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(no_args_is_help=True, help="Data sets for the student: synthetic shapes on textures.")
console = Console(stderr=True)


@data_app.callback()
def _group() -> None:
    # A callback keeps this a command group even with one command, so the call is always
    # `lfi data synth ...` (Typer would otherwise collapse a single-command app into that command).
    return None


@data_app.command("synth")
def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write to (new, empty, or an earlier synth output)."),
    n: int = typer.Option(250, "--n", help="Training images per class."),
    correlation: float = typer.Option(0.9, help="Chance that an in-domain image has its class's own background."),
    seed: int = typer.Option(0, help="Every image follows from this seed (same arguments, same bytes)."),
    image_size: int = typer.Option(64, help="Side of the square images in pixels (>= 16)."),
    shifted: int = typer.Option(50, "--shifted", help="Out-of-domain images per class (never the own background)."),
    val: int = typer.Option(50, "--val", help="In-domain validation images per class."),
    task: str = typer.Option("classification", "--task",
                             help="classification (a folder per class) or detection (several shapes per image, "
                                  "COCO format; --n/--val/--shifted then count images, not images per class)."),
    max_objects: int = typer.Option(3, "--max-objects", help="Detection: at most this many shapes per image."),
) -> None:
    """Write the synthetic shape/texture set: train, val and a background-shifted test split, with masks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if task == "detection":
        _synth_detection(out_dir, n, val, shifted, max_objects, seed, image_size)
        return
    if task != "classification":
        console.print(f"[red]error:[/red] --task must be classification or detection, got {task!r}")
        raise typer.Exit(2)
    from shared.synth import CLASSES, SPLITS, generate, validate_arguments

    try:  # before the progress bar, so a bad argument is just one error line
        validate_arguments(n, val, shifted, correlation, seed, image_size)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    total = (n + val + shifted) * len(CLASSES)
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("synth", total=max(total, 0))
            report = generate(out_dir, n_train_per_class=n, n_val_per_class=val, n_shifted_per_class=shifted,
                              correlation=correlation, seed=seed, image_size=image_size,
                              progress=lambda k: progress.advance(bar, k))
    except (ValueError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    table = Table(title=str(report.out_dir))
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("own background", justify="right")
    for split in SPLITS:
        table.add_row(split, str(report.counts[split]), f"{report.own_background[split]:.0%}")
    console.print(table)
    # One JSON line on stdout, like `lfi maps`, so scripts can read the result.
    print(json.dumps({"out_dir": str(report.out_dir), "images": report.images, "counts": report.counts,
                      "own_background": {k: round(v, 4) for k, v in report.own_background.items()}}))


def _synth_detection(out_dir: Path, n: int, val: int, shifted: int, max_objects: int, seed: int,
                     image_size: int) -> None:
    """`lfi data synth DIR --task detection`: the COCO-format set of shared.detection_synth."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from shared.detection_synth import generate_detection, validate_detection_arguments

    try:
        validate_detection_arguments({"train": n, "val": val, "shifted": shifted}, max_objects, seed, image_size)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("synth", total=n + val + shifted)
            report = generate_detection(out_dir, n_train=n, n_val=val, n_shifted=shifted, max_objects=max_objects,
                                        seed=seed, image_size=image_size, progress=lambda k: progress.advance(bar, k))
    except (ValueError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=str(out_dir))
    for column in ("split", "images", "objects"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, counts in report.items():
        table.add_row(split, str(counts["images"]), str(counts["objects"]))
    console.print(table)
    print(json.dumps({"out_dir": str(out_dir), "task": "detection", "counts": report}))
