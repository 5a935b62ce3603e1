"""What the effect benchmarks share (lfi_effect.py, detr_effect.py): variants, the seed loop, the table.

A variant is `name[:key=value,...]`: a student name and job spec or trainer config overrides (`align_layers=0+1`
is a list). Each variant is trained once per seed; a run is a dict with `seed`, `history` (one dict per epoch,
holding at least `epoch` and `val`) and `seconds`. The summary keeps each variant's last-epoch numbers per
seed and the first epoch whose `val` reaches the baseline's best `val` (mean over the baseline's seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Variant = tuple[str, str, dict]  # (the text as given, the name, the overrides)


def parse_variant(text: str, names: Sequence[str]) -> Variant:
    name, _, options = text.partition(":")
    if name not in names:
        raise SystemExit(f"unknown variant {name!r}: use {', '.join(names[:-1])} or {names[-1]}")
    overrides: dict = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key == "align_layers":
            overrides[key] = [int(v) for v in value.split("+")]
        else:
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value
    return text, name, overrides


def run_seeds(console: Any, variants: Sequence[Variant], seeds: Sequence[int],
              run: Callable[[str, str, dict, int], dict], line: Callable[[dict], str]) -> dict[str, list[dict]]:
    """`run(label, name, overrides, seed)` for every variant and seed, a spinner meanwhile and `line(last
    epoch)` printed after each; the runs by variant label."""
    runs: dict[str, list[dict]] = {}
    for label, name, overrides in variants:
        for seed in seeds:
            with console.status(f"{label} seed {seed}"):
                result = run(label, name, overrides, seed)
            console.print(f"{label} seed {seed}: {line(result['history'][-1])} ({result['seconds']:.0f} s)")
            runs.setdefault(label, []).append(result)
    return runs


def baseline_label(variants: Sequence[Variant], name: str) -> str:
    """The first variant called `name` (the plain student), else the first variant."""
    return next((label for label, variant, _ in variants if variant == name), variants[0][0])


def summarise(runs: dict[str, list[dict]], baseline: str, keys: Sequence[str]) -> list[dict]:
    target = statistics.mean(max(h["val"] for h in run["history"]) for run in runs[baseline])
    rows = []
    for variant, seeds in runs.items():
        last = [run["history"][-1] for run in seeds]
        reach = [next((h["epoch"] for h in run["history"] if h["val"] >= target - 1e-9), None) for run in seeds]
        rows.append({"variant": variant, **{key: [h[key] for h in last] for key in keys}, "epochs_to_target": reach,
                     "target": target, "seconds": statistics.mean(run["seconds"] for run in seeds)})
    return rows


def pm(values: list[float]) -> str:
    """Fractions as percent, mean ± standard deviation over the seeds."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def report(console: Any, args: argparse.Namespace, runs: dict[str, list[dict]], *, baseline: str, title: str,
           columns: dict[str, str], teacher_info: dict) -> None:
    """The table (one row a variant; `columns` maps a history key to its heading), the teacher's settings, and
    with `--json` every run's numbers."""
    from rich.table import Table

    rows = summarise(runs, baseline, list(columns))
    table = Table(title=title)
    for column in ("variant", *columns.values(), f"epochs to {baseline}'s best val", "s / run"):
        table.add_column(column, justify="right")
    for row in rows:
        reach = ", ".join("-" if r is None else str(r) for r in row["epochs_to_target"])
        table.add_row(row["variant"], *(pm(row[key]) for key in columns),
                      f"{reach} (target {100 * row['target']:.1f})", f"{row['seconds']:.0f}")
    console.print(table)
    console.print(f"teacher {args.teacher}: {json.dumps(teacher_info)}")
    if args.json:
        path: Path = args.json
        path.write_text(json.dumps({"args": vars(args) | {"json": str(path)}, "teacher": teacher_info,
                                    "summary": rows, "runs": runs}, indent=2, default=str))
