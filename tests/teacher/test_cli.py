"""`lfi teacher extract` on the real tokenizer, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image

VICUNA_V1_START = "A chat between a curious human and an artificial intelligence assistant."


def _extract(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", "teacher", "extract", *args], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_extract_asks_under_the_system_prompt_chosen_and_says_what_it_asked(real_vocab_dir, tmp_path):
    image = tmp_path / "wheel.png"
    Image.effect_noise((120, 80), 50).convert("RGB").save(image)
    common = [str(image), "--model", str(real_vocab_dir), "--label", "potter's wheel", "--background", "shop"]
    default = _extract(*common, "--out", str(tmp_path / "default"))  # --device auto: cpu + float32 here
    bare = _extract(*common, "--out", str(tmp_path / "none"), "--system-prompt", "none")
    assert default.returncode == 0 and bare.returncode == 0, default.stderr[-2000:] + bare.stderr[-2000:]
    asked = json.loads((tmp_path / "default" / "results.jsonl").read_text())
    asked_bare = json.loads((tmp_path / "none" / "results.jsonl").read_text())
    assert asked["question"].startswith(VICUNA_V1_START) and asked["status"] == "ok"
    assert asked_bare["question"].startswith("USER: <image>\nIf you are doing an image classification task")
    assert asked["answer"] == asked_bare["answer"] == "{'foreground': 'potter's wheel', 'background': 'shop'}"
    wrong = _extract(*common, "--out", str(tmp_path / "x"), "--system-prompt", "vicuna")
    assert wrong.returncode == 2 and "system_prompt must be one of llava, none" in " ".join(wrong.stderr.split())
