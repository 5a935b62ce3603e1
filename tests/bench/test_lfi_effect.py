"""bench/lfi_effect.py: the summary it prints (best variants, the paired shifted gain) and a tiny
pretrained-frozen run end to end (2 images per class, one epoch: the script's plumbing, not its numbers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.lfi_effect import SETTINGS, best_val, best_variant, shifted_gain

ROOT = Path(__file__).resolve().parents[2]


def _run(seed: int, vals: list[float], shifted: float) -> dict:
    return {"seed": seed, "seconds": 1.0,
            "history": [{"epoch": i + 1, "val": v, "shifted": shifted} for i, v in enumerate(vals)]}


def test_the_gain_pairs_seeds_and_the_best_variants_are_chosen_by_mean():
    runs = {"vit": [_run(0, [0.5, 0.8], 0.20), _run(1, [0.6, 0.9], 0.30)],
            "vit:freeze=false": [_run(0, [0.4], 0.10), _run(1, [0.4], 0.12)],
            "ivit": [_run(1, [0.9], 0.45), _run(0, [0.9], 0.30)]}
    assert best_variant(runs, ["vit", "vit:freeze=false"]) == "vit"
    assert best_val(runs, "vit") == pytest.approx(0.85)
    gain, spread = shifted_gain(runs, "ivit", "vit")
    assert gain == pytest.approx(0.125) and spread == pytest.approx(0.0353553, rel=1e-4)  # (0.10, 0.15)
    names = [variant.partition(":")[0] for variant in SETTINGS["pretrained-frozen"]["variants"]]
    assert {"vit", "ivit", "oracle"} <= set(names) and "vit:freeze=false" in SETTINGS["pretrained-frozen"]["variants"]


def test_a_tiny_pretrained_frozen_run_prints_the_table_and_the_gain_line(tmp_path):
    import torch
    from transformers import ViTForImageClassification

    from services.student.model_config import student_config

    torch.manual_seed(0)
    ViTForImageClassification(student_config("vit-tiny", 16, "off")).save_pretrained(tmp_path / "vit")
    command = [sys.executable, "bench/lfi_effect.py", "--setting", "pretrained-frozen", "--init", str(tmp_path / "vit"),
               "--variants", "vit", "vit:freeze=false", "ivit", "oracle", "--seeds", "0,1", "--epochs", "1",
               "--train-per-class", "2", "--val-per-class", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(variant in done.stdout for variant in ("vit:freeze=false", "oracle", "ivit"))
    assert re.fullmatch(r"shifted gain: [+-]\d+\.\d ± \d+\.\d points \(I-ViT best variant vs best ViT variant\)",
                        done.stdout.strip().splitlines()[-1])
