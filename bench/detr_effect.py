"""Does learning where to look help a detector? Conditional DETR against I-DETR on the synthetic shapes.

The detection set (`shared.detection_synth`, `lfi data synth DIR --task detection`) puts 1-3 shapes on a
texture; `train`/`val` use two textures, `shifted` the other two. The teacher (default: the shipped trained
tiny teacher, `builtin:tiny-synth`) is asked once per training object, exactly as a job asks it (the dense
prompt with that one box drawn, its label forced); the maps are kept in memory for every run. `oracle`
aligns with the ground-truth instance masks instead: the ceiling of what any teacher could give.

Per variant and seed: COCO AP and AP50 (pycocotools) on `val` and `shifted` after the last epoch, and the
first epoch whose `val` AP reaches the plain detector's best (mean over its seeds).

    python bench/detr_effect.py                                  # cdetr-tiny: detr vs idetr, 3 seeds
    python bench/detr_effect.py --variants detr idetr oracle idetr:ablation=no-constraint --seeds 0

A variant is `name[:key=value,...]`; names: detr, idetr, oracle; keys are job spec or `DetectionConfig`
fields (align_weight, align_layers=0+1, ablation, lr, model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._seeds import baseline_label, parse_variant, report, run_seeds

VARIANTS = ("detr", "idetr", "oracle")


class PrecomputedInstanceMaps:
    """Maps computed once before training, looked up by (image path, box): a `MapSource`."""

    def __init__(self, maps: dict[tuple[str, tuple[float, ...]], np.ndarray]) -> None:
        self.maps = maps

    def fetch(self, requests: Sequence) -> list[np.ndarray | None]:
        return [self.maps.get((r.sample.rel, tuple(r.box))) for r in requests]


def teacher_maps(teacher: str, data, batch: int = 32) -> tuple[dict, dict]:
    """One map per training object: the dense prompt with that box alone, label forced (as a job asks)."""
    from PIL import Image
    from rich.progress import track

    from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
    from services.teacher.tiny.resolve import resolve_model
    from shared.schemas import Box
    from shared.settings import get_settings

    engine = InteractionEngine.from_pretrained(resolve_model(teacher, get_settings().cache_dir))
    names = data.category_names
    objects = [(image, item) for image in data.train.images for item in image.objects if not item.iscrowd]
    maps, degenerate = {}, 0
    for i in track(range(0, len(objects), batch), description=f"teacher maps ({teacher})", transient=True):
        chunk = objects[i : i + batch]
        requests = []
        for image, item in chunk:
            x, y, w, h = item.bbox
            box = Box(xyxy=(x, y, x + w, y + h), label=names[item.category_id])
            requests.append(InteractionRequest(image=Image.open(image.path).convert("RGB"), task="detection",
                                               boxes=[box]))
        for (image, item), result in zip(chunk, engine.extract_batch(requests), strict=True):
            x, y, w, h = item.bbox
            maps[(image.rel, (x, y, x + w, y + h))] = result.map
            degenerate += result.degenerate
    return maps, {"settings": engine.settings.as_dict(), "maps": len(maps),
                  "degenerate": degenerate / max(1, len(objects))}


def run_one(name: str, overrides: dict, seed: int, args, data, sources: dict, run_dir: Path) -> dict:
    from services.student.detection.trainer import DetectionConfig, DetectionTrainer
    from shared.job_spec import JobSpec

    spec = JobSpec(dataset="synth", task="detection", model=args.model, student="detr" if name == "detr" else "idetr",
                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed)
    config = DetectionConfig.from_spec(spec, step_checkpoints=False, device="cpu", **overrides)
    began = time.perf_counter()
    result = DetectionTrainer(config, data, run_dir, map_source=sources.get(name)).run()
    history = [{"epoch": h["epoch"], "val": h["val_map"]["AP"], "val50": h["val_map"]["AP50"],
                "shifted": h["heldout_map"]["shifted"]["AP"], "shifted50": h["heldout_map"]["shifted"]["AP50"],
                "task_loss": h["task_loss"], "align_loss": h["align_loss"]} for h in result.history]
    return {"seed": seed, "history": history, "seconds": time.perf_counter() - began}


def _arguments() -> argparse.Namespace:
    from services.teacher.tiny.resolve import TRAINED_SPEC

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=TRAINED_SPEC)
    parser.add_argument("--variants", nargs="+", default=["detr", "idetr"])
    parser.add_argument("--model", default="cdetr-tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train", type=int, default=400, help="training images")
    parser.add_argument("--eval", type=int, default=100, help="val and shifted images each")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    parser.add_argument("--json", type=Path, help="write every run's per-epoch numbers here")
    return parser.parse_args()


def main() -> None:
    import torch
    from rich.console import Console

    from services.student.detection.oracle import InstanceMaskMaps
    from shared.coco import discover_coco
    from shared.detection_synth import generate_detection

    args = _arguments()
    torch.set_num_threads(args.threads)
    console = Console()
    variants = [parse_variant(v, VARIANTS) for v in args.variants]
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="lfi-detr-effect-") as tmp:
        root = Path(tmp) / "shapes"
        generate_detection(root, n_train=args.train, n_val=args.eval, n_shifted=args.eval, seed=args.data_seed)
        data = discover_coco(root, ["shifted"])
        maps, teacher_info = ({}, {})
        if any(name == "idetr" for _, name, _ in variants):
            maps, teacher_info = teacher_maps(args.teacher, data)
        sources = {"idetr": PrecomputedInstanceMaps(maps), "oracle": InstanceMaskMaps(data)}
        runs = run_seeds(console, variants, seeds,
                         lambda label, name, overrides, seed: run_one(name, overrides, seed, args, data, sources,
                                                                      Path(tmp) / f"{label}-{seed}"),
                         lambda last: f"val AP {last['val']:.3f} shifted AP {last['shifted']:.3f}")
    baseline = baseline_label(variants, "detr")
    report(console, args, runs, baseline=baseline,
           title=f"{args.model}, {args.epochs} epochs, {args.train} train images, seeds {args.seeds}; "
                 "COCO AP % mean ± std",
           columns={"val": "val AP", "val50": "val AP50", "shifted": "shifted AP", "shifted50": "shifted AP50"},
           teacher_info=teacher_info)


if __name__ == "__main__":
    main()
