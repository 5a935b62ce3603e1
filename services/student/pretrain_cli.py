"""`lfi student pretrain OUT`: the shipped pretrained backbone (`builtin:vit-tiny-synth`), reproducibly."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

student_app = typer.Typer(no_args_is_help=True, help="The student's own artifacts: a pretrained backbone.")
console = Console(stderr=True)


@student_app.callback()
def _group() -> None:
    # Keeps `lfi student pretrain` a group with one command (Typer would collapse it otherwise).
    return None


@student_app.command("pretrain")
def pretrain(
    out_dir: Path = typer.Argument(..., help="Folder to write the ViT checkpoint to."),
    seed: int = typer.Option(0, help="Weights follow from this seed."),
    data_seed: int = typer.Option(2000, help="Synthetic image stream (disjoint from the student's set, seed 0)."),
    model: str = typer.Option("vit-tiny", help="Student geometry (a name of `model` in a job spec)."),
    images: int = typer.Option(None, help="Distinct training images drawn (default: the shipped one's)."),
    epochs: int = typer.Option(None, help="Passes over them, flipped at random (default: the shipped one's)."),
    batch_size: int = typer.Option(None, help="Images per step (default: the shipped one's)."),
    lr: float = typer.Option(None, help="Peak learning rate (default: the shipped one's)."),
    eval_images: int = typer.Option(None, help="Held-out images scored every --eval-every steps."),
    eval_every: int = typer.Option(None, help="Steps between evaluations."),
) -> None:
    """Pretrain a ViT on 16-way (shape, texture) synthetic images, every background equally likely."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from services.student.pretrain import PretrainConfig, pretrain_backbone

    given = {"images": images, "epochs": epochs, "batch_size": batch_size, "lr": lr, "eval_images": eval_images,
             "eval_every": eval_every}
    try:
        config = PretrainConfig(seed=seed, data_seed=data_seed, model=model,
                                **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if out_dir.exists() and not out_dir.is_dir():
        console.print(f"[red]error:[/red] {out_dir} is a file; give a folder for the checkpoint")
        raise typer.Exit(2)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").exists():
        console.print(f"[red]error:[/red] {out_dir} is not empty and holds no checkpoint; give a new folder")
        raise typer.Exit(2)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        drawing = progress.add_task("images", total=config.images, note="drawing")
        bar = progress.add_task("pretrain", total=config.steps, note="")

        def on_step(step: int, loss: float, scores: dict | None) -> None:
            note = f"loss {loss:.3f}" + (f"  val {scores['pair']:.1%}" if scores else "")
            progress.update(bar, completed=step, note=note if scores or step % 20 == 0 else
                            progress.tasks[bar].fields["note"])
            if scores:
                console.print(f"step {step}: 16-way {scores['pair']:.1%}, shape {scores['shape']:.1%}, "
                              f"texture {scores['texture']:.1%}")

        report = pretrain_backbone(out_dir, config, on_step, lambda n: progress.advance(drawing, n))
    print(json.dumps({"out_dir": str(report.out_dir), "seconds": round(report.seconds, 1),
                      "evaluation": report.evaluation}))
