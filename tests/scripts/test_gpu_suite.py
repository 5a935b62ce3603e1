"""The GPU suite's CPU smoke mode: the same code path a GPU box runs, on the tiny preset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_suite_runs_on_cpu_and_prints_every_table() -> None:
    cmd = [sys.executable, "scripts/gpu_suite.py", "--device", "cpu", "--preset", "tiny", "--dtype", "float32",
           "--student", "vit-tiny", "--batches", "1,2", "--repeats", "1", "--student-batch", "4",
           "--student-steps", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "matmul:" in out
    forward_rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])
                    and len(line.split()) == 7]
    assert {(r[0], r[1]) for r in forward_rows} == {("1", "plain"), ("1", "capture"), ("2", "plain"), ("2", "capture")}
    assert "cold maps/s through the engine" in out
    cold_rows = [line.split() for line in out.splitlines()
                 if line.split()[:1] in (["1"], ["2"]) and len(line.split()) == 13]
    assert [r[0] for r in cold_rows] == ["1", "2"]
    assert "I-ViT / ViT step time:" in out
