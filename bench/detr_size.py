"""Parameters and forward FLOPs of DETR / Conditional DETR against I-DETR, next to the paper's (Table 6).

    python bench/detr_size.py             # the R50 detectors at 800 x 800 and the tiny ones at 64 x 64
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.student.detection.model import build_detector, count_detector_flops

PAPER = {"detr-r50": "41.5M -> 41.9M, +0.6 % FLOPs"}
SIZES = {"detr-r50": 800, "cdetr-r50": 800, "cdetr-tiny": 64, "detr-tiny": 64}


def main() -> None:
    print(f"{'model':<11}{'input':>7}{'plain params':>14}{'I-DETR params':>15}{'plain GFLOPs':>14}"
          f"{'I-DETR GFLOPs':>15}{'ratio':>8}  paper")
    for name, size in SIZES.items():
        row = []
        for mode in ("off", "full"):
            model = build_detector(name, 91 if "r50" in name else 4, mode)
            row += [sum(p.numel() for p in model.parameters()) / 1e6, count_detector_flops(model, size) / 1e9]
            del model
        print(f"{name:<11}{size:>7}{row[0]:>13.3f}M{row[2]:>14.3f}M{row[1]:>14.3f}{row[3]:>15.3f}"
              f"{row[3] / row[1]:>8.4f}  {PAPER.get(name, '-')}")


if __name__ == "__main__":
    main()
