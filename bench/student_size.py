"""Parameters and forward FLOPs of ViT vs I-ViT at S/16, B/16 and L/16 (224 px), next to the paper's.

    python bench/student_size.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.student.model import build_student, count_flops, count_parameters

PAPER = {"vit-s16": "22M -> 24M, 15.5 -> 18.1 GFLOPs"}


def main() -> None:
    print(f"{'model':<9}{'ViT params':>12}{'I-ViT params':>14}{'ViT GFLOPs':>12}{'I-ViT GFLOPs':>14}"
          f"{'ratio':>7}  paper")
    for size in ("vit-s16", "vit-b16", "vit-l16"):
        row = []
        for mode in ("off", "full"):
            model = build_student(size, 1000, mode)
            row += [count_parameters(model)["total"] / 1e6, count_flops(model) / 1e9]
            del model
        print(f"{size:<9}{row[0]:>11.2f}M{row[2]:>13.2f}M{row[1]:>12.2f}{row[3]:>14.2f}{row[3] / row[1]:>7.3f}  "
              f"{PAPER.get(size, '-')}")


if __name__ == "__main__":
    main()
