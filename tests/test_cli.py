"""The console script, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image


def _lfi(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def test_extract_writes_maps_and_reports_bad_files(tiny_dir, tmp_path):
    good = tmp_path / "good.png"
    Image.effect_noise((120, 80), 50).convert("RGB").save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "maps"
    result = _lfi("teacher", "extract", str(good), str(bad), "--model", str(tiny_dir), "--label", "cat",
                  "--grid", "7x7", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "good.npy").exists() and (out / "good-map.png").exists()
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [str(good)]
    assert lines[0]["shape"] == [7, 7]
    assert "not an image" in result.stdout


def test_build_tiny_refuses_an_unknown_preset(tmp_path):
    result = _lfi("teacher", "build-tiny", str(tmp_path / "x"), "--preset", "huge")
    assert result.returncode == 2
    assert "unknown preset" in result.stderr


def test_a_bad_model_reference_is_a_clear_error_not_a_traceback(tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    missing = _lfi("teacher", "extract", str(image), "--model", str(tmp_path / "nowhere"), "--label", "cat")
    assert missing.returncode == 2 and "not a checkpoint folder" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = _lfi("teacher", "extract", str(image), "--model", "builtin:huge", "--label", "cat")
    assert unknown.returncode == 2 and "unknown built-in model" in unknown.stderr
    teams = tmp_path / "teams.yaml"
    teams.write_text("teams: []\n")
    serve = _lfi("teacher", "serve", "--model", str(tmp_path / "nowhere"), env={"LFI_TEAMS_FILE": str(teams)})
    assert serve.returncode == 2 and "not a checkpoint folder" in serve.stderr
