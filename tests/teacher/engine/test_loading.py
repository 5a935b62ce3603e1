"""Device and dtype choice: `auto` never puts a model in float32 on a GPU or in bfloat16 on a CPU."""

from __future__ import annotations

import pytest
import torch

from services.teacher.engine.loading import load_vlm, resolve_device


@pytest.mark.parametrize(
    ("device", "dtype", "cuda", "expected"),
    [
        ("auto", "auto", True, ("cuda", "bfloat16")),
        ("auto", "auto", False, ("cpu", "float32")),
        ("cuda:1", "auto", True, ("cuda:1", "bfloat16")),
        ("cpu", "auto", True, ("cpu", "float32")),  # asked for the CPU on a GPU box: float32 there
        ("auto", "float16", True, ("cuda", "float16")),  # an explicit dtype is kept
        ("cuda", "float32", True, ("cuda", "float32")),
    ],
)
def test_auto_picks_cuda_and_bfloat16_only_where_a_gpu_is_visible(device, dtype, cuda, expected):
    assert resolve_device(device, dtype, cuda_available=cuda) == expected


def test_loading_with_auto_uses_what_this_machine_has(tiny_dir):
    vlm = load_vlm(tiny_dir, device="auto", dtype="auto")
    if torch.cuda.is_available():
        assert vlm.device.type == "cuda" and vlm.dtype == torch.bfloat16
    else:
        assert vlm.device.type == "cpu" and vlm.dtype == torch.float32
