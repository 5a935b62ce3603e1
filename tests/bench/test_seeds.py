"""The effect benchmarks' shared helpers (bench/_seeds.py): variants, the summary over seeds, mean ± std."""

from __future__ import annotations

import pytest

from bench._seeds import baseline_label, parse_variant, pm, summarise

NAMES = ("vit", "ivit", "oracle")


def test_a_variant_names_a_student_and_its_overrides() -> None:
    text = "ivit:align_weight=5,align_layers=0+2,align_rows=mean,augment=false"
    assert parse_variant(text, NAMES) == (text, "ivit", {"align_weight": 5, "align_layers": [0, 2],
                                                         "align_rows": "mean", "augment": False})
    assert parse_variant("vit", NAMES) == ("vit", "vit", {})
    with pytest.raises(SystemExit, match="unknown variant 'detr': use vit, ivit or oracle"):
        parse_variant("detr:lr=1", NAMES)


def _run(seed: int, vals: list[float], seconds: float) -> dict:
    history = [{"epoch": i + 1, "val": v, "shifted": v / 2} for i, v in enumerate(vals)]
    return {"seed": seed, "history": history, "seconds": seconds}


def test_the_summary_keeps_the_last_epoch_per_seed_and_when_each_reached_the_baselines_best() -> None:
    runs = {"vit": [_run(0, [0.2, 0.6, 0.5], 10), _run(1, [0.4, 0.8, 0.8], 20)],
            "ivit": [_run(0, [0.7, 0.9, 0.9], 30), _run(1, [0.1, 0.2, 0.3], 50)]}
    rows = summarise(runs, "vit", ["val", "shifted"])
    assert [row["variant"] for row in rows] == ["vit", "ivit"]
    vit, ivit = rows
    assert vit["target"] == ivit["target"] == pytest.approx(0.7)  # mean of the baseline's best: (0.6 + 0.8) / 2
    assert vit["val"] == [0.5, 0.8] and vit["shifted"] == [0.25, 0.4]
    assert vit["epochs_to_target"] == [None, 2] and ivit["epochs_to_target"] == [1, None]
    assert vit["seconds"] == 15 and ivit["seconds"] == 40
    assert list(vit) == ["variant", "val", "shifted", "epochs_to_target", "target", "seconds"]


def test_percent_mean_and_spread_and_the_baseline() -> None:
    assert pm([0.5, 0.7]) == "60.0 ± 14.1"
    assert pm([0.25]) == "25.0 ± 0.0"
    variants = [("oracle", "oracle", {}), ("vit:lr=1", "vit", {"lr": 1}), ("vit", "vit", {})]
    assert baseline_label(variants, "vit") == "vit:lr=1"
    assert baseline_label(variants, "detr") == "oracle"
