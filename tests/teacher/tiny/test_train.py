"""The trained tiny teacher: reproducible training, the shipped checkpoint, and maps that point at the shape."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
from services.teacher.engine.extraction_settings import EXTRACTION_FILE, ExtractionSettings, recommended_settings
from services.teacher.tiny.map_quality import held_out_samples, mass_inside, score
from services.teacher.tiny.resolve import SHIPPED_DIR, TRAINED_SPEC, resolve_model
from services.teacher.tiny.train import TinyTrainConfig, answer_text, train_tiny_teacher
from shared.errors import InvalidRequest

QUICK = TinyTrainConfig(vision_steps=3, steps=3, batch_size=4, warmup_steps=1)


def _digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_answer_text_is_what_the_engine_forces_and_parses():
    from services.teacher.engine.prompts import TEMPLATES, parse_answer

    text = answer_text("circle", "stripes")
    assert text == " {'foreground': 'circle', 'background': 'stripes'}"
    parsed = parse_answer(TEMPLATES["fg-bg-vocab"], text, ["circle", "square"])
    assert parsed.status == "ok"
    assert [text[s.start : s.end] for s in parsed.foreground] == ["circle"]
    assert [text[s.start : s.end] for s in parsed.background] == ["stripes"]


def test_training_is_reproducible_from_the_seed_and_loads_through_the_engine(tmp_path):
    first = train_tiny_teacher(tmp_path / "a", QUICK, evaluate=False)
    again = train_tiny_teacher(tmp_path / "b", QUICK, evaluate=False)
    other = train_tiny_teacher(tmp_path / "c", replace(QUICK, seed=1), evaluate=False)
    assert _digest(first.out_dir) == _digest(again.out_dir)
    assert _digest(first.out_dir) != _digest(other.out_dir)
    assert len(first.losses) == QUICK.steps and all(np.isfinite(first.losses))
    record = json.loads((first.out_dir / "lfi_build.json").read_text())
    assert record["builder"] == "lfi teacher train-tiny" and record["training"]["seed"] == 0
    engine = InteractionEngine.from_pretrained(str(first.out_dir))
    sample = held_out_samples(1)[0]
    result = engine.extract(InteractionRequest(image=Image.fromarray(sample.image), label=sample.cls))
    assert result.map.shape == (8, 8) and result.map.sum() == pytest.approx(1.0, abs=1e-5)


def test_bad_training_settings_are_refused():
    with pytest.raises(ValueError, match="steps"):
        TinyTrainConfig(steps=0)
    with pytest.raises(ValueError, match="preset"):
        TinyTrainConfig(preset="huge")
    with pytest.raises(ValueError, match="lr"):
        TinyTrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="data_seed"):
        TinyTrainConfig(data_seed=-3)


def test_the_trained_teacher_is_shipped_small_and_is_what_builtin_resolves_to(tmp_path):
    folder = resolve_model(TRAINED_SPEC, tmp_path)
    assert folder == str(SHIPPED_DIR)
    total = sum(f.stat().st_size for f in SHIPPED_DIR.iterdir())
    assert total < 20e6
    record = json.loads((SHIPPED_DIR / "lfi_build.json").read_text())
    assert record["builder"] == "lfi teacher train-tiny"
    assert record["evaluation"]["background_accuracy"] > 0.9


def test_shipped_teacher_maps_put_at_least_twice_the_uniform_mass_inside_the_shape(tiny_dir):
    """The issue's bar, checked on held-out images the recommendation was not chosen on."""
    engine = InteractionEngine.from_pretrained(str(SHIPPED_DIR))
    assert engine.settings == recommended_settings(SHIPPED_DIR)
    samples = held_out_samples(32, seed=123)
    result = score(engine, samples, layers=False)
    assert result.ratio >= 2.0, result
    random_weights = InteractionEngine.from_pretrained(str(tiny_dir), settings=engine.settings)
    baseline = score(random_weights, samples, layers=False)
    assert result.combined > 2 * baseline.combined


def test_shipped_teacher_names_the_background():
    engine = InteractionEngine.from_pretrained(str(SHIPPED_DIR))
    samples = held_out_samples(16, seed=321)
    results = engine.extract_batch([InteractionRequest(image=Image.fromarray(s.image), vocabulary=list(
        ("circle", "square", "triangle", "cross"))) for s in samples])
    named = ["".join(r.background_tokens).strip() == s.background for r, s in zip(results, samples, strict=True)]
    assert np.mean(named) >= 0.8
    assert all(r.answer_status == "ok" for r in results)


def test_mass_inside_scores_uniform_maps_at_the_area_fraction():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:6] = True
    uniform = np.full((8, 8), 1 / 64)
    assert mass_inside(uniform, mask) == pytest.approx(mask.mean())
    peaked = mask / mask.sum()
    assert mass_inside(peaked, mask) == pytest.approx(1.0)


def test_rows_setting_changes_the_rows_and_the_cache_key(engine):
    sample = held_out_samples(1)[0]
    request = InteractionRequest(image=Image.fromarray(sample.image), label="circle")
    word = engine.extract(request).map
    word_key = engine.key_settings()
    before = engine.settings
    try:
        engine.settings = ExtractionSettings(rows="predicting")
        predicting = engine.extract(request).map
        assert engine.key_settings() != word_key
    finally:
        engine.settings = before
    assert not np.allclose(word, predicting)
    with pytest.raises(InvalidRequest, match="rows"):
        ExtractionSettings(rows="middle")


def test_recommended_settings_come_from_the_folder_and_bad_files_are_named(tmp_path):
    assert recommended_settings(tmp_path) == ExtractionSettings()
    (tmp_path / EXTRACTION_FILE).write_text(json.dumps({"layers": [1, 3], "rows": "predicting"}))
    assert recommended_settings(tmp_path) == ExtractionSettings(layers=(1, 3), rows="predicting")
    (tmp_path / EXTRACTION_FILE).write_text(json.dumps({"layers": [1], "rows": "sideways"}))
    with pytest.raises(InvalidRequest, match=EXTRACTION_FILE):
        recommended_settings(tmp_path)


def test_cli_trains_with_a_progress_bar_and_scores_the_maps(tmp_path):
    out = tmp_path / "teacher"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "teacher", "train-tiny", str(out), "--vision-steps", "2",
         "--steps", "2", "--batch-size", "4", "--measure", "8"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stage 2" in proc.stderr and "trained" in proc.stderr
    extraction = json.loads((out / EXTRACTION_FILE).read_text())
    assert extraction["rows"] in {"word", "predicting"} and extraction["evidence"]["held_out_images"] == 8
    bad = subprocess.run([sys.executable, "-m", "services.cli", "teacher", "train-tiny", str(out), "--steps", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "steps must be >= 1" in bad.stderr
    (tmp_path / "a-file").write_text("")
    unwritable = subprocess.run([sys.executable, "-m", "services.cli", "teacher", "train-tiny",
                                 str(tmp_path / "a-file" / "teacher")], capture_output=True, text=True, timeout=120)
    assert unwritable.returncode == 2 and "cannot write the checkpoint" in unwritable.stderr
    negative = subprocess.run([sys.executable, "-m", "services.cli", "teacher", "train-tiny", str(out), "--measure",
                               "-1"], capture_output=True, text=True, timeout=120)
    assert negative.returncode == 2 and "--measure must be >= 0" in negative.stderr
