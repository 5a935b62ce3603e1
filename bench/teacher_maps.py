"""Do the teacher's maps point at the object? Map mass inside the ground-truth mask, per layer.

For held-out images of the synthetic set (every background equally likely), the teacher is asked
the way the student's trainer asks (label forced, the model writes the background), and each
captured text layer's C_VLM is resampled onto the image's pixels. Three numbers per layer:

  inside   mean share of the map's mass that falls inside the shape's mask
  area     mean area fraction of the mask: what a uniform map scores
  ratio    inside / area: 1.0 is no better than uniform; the goal is at least 2

for the trained tiny teacher and the random-weight one, with the answer words' own attention rows
(`rows=word`) and the rows that predict them (`rows=predicting`). `all layers` is the map averaged
over every layer; the last line scores the checkpoint's recommended settings (the service default).

    python bench/teacher_maps.py                          # shipped trained teacher vs builtin:tiny
    python bench/teacher_maps.py --model DIR --images 128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(model: str, images: int, rows: str, seed: int) -> dict:
    from services.teacher.engine.extraction import InteractionEngine, recommended_settings
    from services.teacher.tiny.map_quality import held_out_samples, score
    from services.teacher.tiny.resolve import resolve_model
    from shared.settings import get_settings

    folder = resolve_model(model, get_settings().cache_dir)
    settings = replace(recommended_settings(folder), layers=None, rows=rows)
    result = score(InteractionEngine.from_pretrained(folder, settings=settings), held_out_samples(images, seed=seed))
    return {"model": model, "rows": rows, "images": images, "area": result.area,
            "layers": {str(k): v for k, v in result.per_layer.items()}, "all": result.combined,
            "degenerate": result.degenerate}


def recommended(model: str, images: int, seed: int) -> dict | None:
    """The checkpoint's own default (its recommended layers and rows), scored on these images."""
    from services.teacher.engine.extraction import InteractionEngine, recommended_settings
    from services.teacher.tiny.map_quality import held_out_samples, score
    from services.teacher.tiny.resolve import resolve_model
    from shared.settings import get_settings

    folder = resolve_model(model, get_settings().cache_dir)
    settings = recommended_settings(folder)
    result = score(InteractionEngine.from_pretrained(folder, settings=settings), held_out_samples(images, seed=seed),
                   layers=False)
    return {"model": model, "settings": settings.as_dict(), "inside": result.combined, "area": result.area}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from services.teacher.tiny.resolve import TRAINED_SPEC

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=TRAINED_SPEC, help="trained teacher (folder or builtin:...)")
    parser.add_argument("--baseline", default="builtin:tiny", help="random-weight teacher to compare with")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--seed", type=int, default=123,
                        help="synthetic stream of the held-out images (the recommendation was chosen on seed 7)")
    parser.add_argument("--rows", default="word,predicting")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    runs = [measure(model, args.images, rows, args.seed)
            for model in (args.model, args.baseline) for rows in args.rows.split(",")]
    n_layers = len(runs[0]["layers"])
    table = Table(title=f"map mass inside the object mask ({args.images} held-out images; uniform = area)")
    for column in ("teacher", "rows", "area", *[f"L{i}" for i in range(n_layers)], "all layers", "degenerate"):
        table.add_column(column, justify="right")
    for run in runs:
        area = run["area"]
        cells = [f"{v:.3f} ({v / area:.2f}x)" for v in run["layers"].values()]
        table.add_row(run["model"], run["rows"], f"{area:.3f}", *cells,
                      f"{run['all']:.3f} ({run['all'] / area:.2f}x)", f"{run['degenerate']:.2f}")
    console = Console(width=200)
    console.print(table)
    default = recommended(args.model, args.images, args.seed)
    console.print(f"{args.model} with its recommended settings {default['settings']}: "
                  f"{default['inside']:.3f} inside ({default['inside'] / default['area']:.2f}x the area fraction)")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "recommended": default}, indent=2))


if __name__ == "__main__":
    main()
