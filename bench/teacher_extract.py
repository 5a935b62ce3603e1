"""Cost of attention capture against a plain forward and eager `output_attentions`.

At LLaVA-1.5 token geometry (576 image tokens + the prompt + a short answer),
one forward pass over the whole sequence, three ways:
  plain    the SDPA kernel, no maps (the floor)
  capture  the lfi_capture kernel with a CaptureSession on 12 answer rows
  eager    attn_implementation="eager" with output_attentions=True (T x T per layer)
Each (mode, batch) runs in its own subprocess, so peak memory (CPU: max RSS;
GPU: torch.cuda.max_memory_allocated) is that mode's alone.

    python bench/teacher_extract.py                     # CPU, preset cpu-bench
    python bench/teacher_extract.py --device cuda --dtype bfloat16 \
        --preset llava-1.5-7b-geometry --batches 1,8,32 --modes plain,capture
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT_TOKENS = 80  # chat template + the fg-bg question + a short vocabulary
ANSWER_ROWS = 12


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so the next peak is the forward's alone.
    Path("/proc/self/clear_refs").write_text("5")


def _setup(batch: int, preset: str, device: str, dtype: str):
    import torch

    from services.teacher.engine.loading import parse_dtype
    from services.teacher.tiny.build import PRESETS, build_tiny_model

    torch.set_grad_enabled(False)
    model, _ = build_tiny_model(preset, device=device, dtype=parse_dtype(dtype))
    config = model.config
    n_img = PRESETS[preset].image_tokens
    length = PROMPT_TOKENS + n_img
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 500, (batch, length), generator=generator)
    ids[:, 5 : 5 + n_img] = config.image_token_index
    side = PRESETS[preset].image_size
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, side, side, generator=generator).to(device, parse_dtype(dtype)),
    }
    rows = torch.arange(length - ANSWER_ROWS, length).repeat(batch, 1)
    cols = torch.arange(5, 5 + n_img).repeat(batch, 1)
    params = sum(p.numel() for p in model.model.language_model.parameters())
    return model, inputs, rows, cols, length, params


def _forward(model, mode: str, inputs, rows, cols) -> None:
    from services.teacher.engine.capture import CAPTURE_IMPLEMENTATION, capturing

    impl = {"plain": "sdpa", "capture": CAPTURE_IMPLEMENTATION, "eager": "eager"}[mode]
    if model.config.text_config._attn_implementation != impl:
        model.set_attn_implementation(impl)
    if mode == "capture":
        with capturing(model, rows, cols) as session:
            model.model(**inputs)
        assert len(session.captured) == model.config.text_config.num_hidden_layers
    elif mode == "eager":
        out = model.model(**inputs, output_attentions=True)
        assert out.attentions is not None
    else:
        model.model(**inputs)


def measure_memory(mode: str, batch: int, preset: str, device: str, dtype: str) -> dict:
    """Peak memory of one forward in this (fresh) process: total and above what was resident before it."""
    import gc

    import torch

    model, inputs, rows, cols, _, _ = _setup(batch, preset, device, dtype)
    _forward(model, mode, inputs, rows, cols)  # warm-up: lazy allocations happen here, not in the measurement
    gc.collect()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes("VmRSS")
        _reset_peak_rss()
    _forward(model, mode, inputs, rows, cols)
    _sync(device)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _rss_bytes("VmHWM")
    return {"mode": mode, "batch": batch, "peak_bytes": peak, "base_bytes": base}


def measure_times(modes: list[str], batch: int, preset: str, device: str, dtype: str, repeats: int) -> list[dict]:
    """Median seconds per forward, the modes interleaved in one process so machine noise hits all alike."""
    model, inputs, rows, cols, length, params = _setup(batch, preset, device, dtype)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for mode in modes:
        _forward(model, mode, inputs, rows, cols)
    for _ in range(repeats):
        for mode in modes:
            _sync(device)
            start = time.perf_counter()
            _forward(model, mode, inputs, rows, cols)
            _sync(device)
            times[mode].append(time.perf_counter() - start)
    return [{"mode": m, "batch": batch, "seconds": statistics.median(t), "tokens": length, "text_params": params}
            for m, t in times.items()]


def matmul_rate(device: str, dtype: str) -> float:
    """Measured dense matmul FLOP/s on this device (the compute floor's denominator)."""
    import torch

    from services.teacher.engine.loading import parse_dtype

    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device, dtype=parse_dtype(dtype))
    b = torch.randn(n, n, device=device, dtype=parse_dtype(dtype))
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 20 if device.startswith("cuda") else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-bench")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--modes", default="plain,capture,eager")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, mode, batch = args.one.split(":")
        if kind == "memory":
            out = measure_memory(mode, int(batch), args.preset, args.device, args.dtype)
        else:
            out = measure_times(mode.split("+"), int(batch), args.preset, args.device, args.dtype, args.repeats)
        print(json.dumps(out))
        return
    modes = args.modes.split(",")

    def child(spec: str):
        cmd = [sys.executable, __file__, "--one", spec, "--preset", args.preset, "--device", args.device,
               "--dtype", args.dtype, "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["?"])[-1])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        for timing in child(f"time:{'+'.join(modes)}:{batch}"):
            try:
                timing.update(child(f"memory:{timing['mode']}:{batch}"))
            except RuntimeError as exc:  # e.g. eager out of memory at large batches
                timing["memory_error"] = str(exc)
            results.append(timing)
    rate = matmul_rate(args.device, args.dtype)
    print(f"preset={args.preset} device={args.device} dtype={args.dtype} "
          f"matmul={rate / 1e12:.2f} TFLOP/s repeats={args.repeats}")
    header = (f"{'batch':>5} {'mode':>8} {'tokens':>6} {'s/image':>9} {'maps/s':>8} {'time x plain':>12} "
              f"{'peak MiB':>9} {'peak x plain':>12} {'floor x':>8}")
    print(header)
    plain = {r["batch"]: r for r in results if r.get("mode") == "plain" and "error" not in r}
    for r in results:
        r.setdefault("peak_bytes", float("nan"))
        ref = plain.get(r["batch"])
        per_image = r["seconds"] / r["batch"]
        floor = 2 * r["text_params"] * r["tokens"] * r["batch"] / rate
        print(f"{r['batch']:>5} {r['mode']:>8} {r['tokens']:>6} {per_image:>9.4f} {1 / per_image:>8.2f} "
              f"{(r['seconds'] / ref['seconds']) if ref else float('nan'):>12.3f} {r['peak_bytes'] / 2**20:>9.0f} "
              f"{(r['peak_bytes'] / ref['peak_bytes']) if ref else float('nan'):>12.3f} "
              f"{r['seconds'] / floor:>8.2f}")


if __name__ == "__main__":
    main()
