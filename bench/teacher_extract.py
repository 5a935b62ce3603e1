"""Cost of attention capture against a plain forward and eager `output_attentions`.

At LLaVA-1.5 token geometry (576 image tokens + the prompt + a short answer),
one forward pass over the whole sequence, three ways:
  plain    the SDPA kernel, no maps (the floor)
  capture  the lfi_capture kernel with a CaptureSession on 12 answer rows
  eager    attn_implementation="eager" with output_attentions=True (T x T per layer)
Each (mode, batch) runs in its own subprocess, so peak memory (CPU: max RSS;
GPU: torch.cuda.max_memory_allocated) is that mode's alone.

Then cold maps/s through the whole engine, in one process with the modes interleaved
(new images every round, the same for every mode in it; label forced and the background written
by the model, as a training job asks):
  forward      one plain forward over the same prompts (the floor: one pass per map)
  decode       InteractionEngine(capture="decode"): capture inside the answer's own decoding
  second-pass  InteractionEngine(capture="second-pass"): generate, then a teacher-forced pass
  forced       label and background both given: no generation, one forward with capture

    python bench/teacher_extract.py                     # CPU, preset cpu-bench
    python bench/teacher_extract.py --device cuda --dtype bfloat16 \
        --preset llava-1.5-7b-geometry --batches 1,8,32 --modes plain,capture
    python bench/teacher_extract.py --parts cold        # only the cold maps/s table
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


COLD_MODES = ("forward", "decode", "second-pass", "forced")


def _png(seed: int, side: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def cold_map_seconds(model, processor, batches: list[int], repeats: int, device: str) -> dict[int, dict[str, float]]:
    """Median seconds per call of `batch` cold maps, per mode (COLD_MODES), modes interleaved."""
    from services.teacher.engine.extraction import InteractionEngine
    from services.teacher.engine.loading import LoadedVLM, ModelIdentity

    vlm = LoadedVLM(model, processor, ModelIdentity("random", "none"))
    side = model.config.vision_config.image_size
    seeds = iter(range(10**9))
    out: dict[int, dict[str, float]] = {}
    for batch in batches:
        engines = {mode: InteractionEngine(vlm, max_batch_size=batch, capture=mode)
                   for mode in ("decode", "second-pass")}
        times: dict[str, list[float]] = {mode: [] for mode in COLD_MODES}
        for round_ in range(repeats + 1):  # round 0 warms up
            # Every mode gets the same images in a round (the engine keeps no cache, so each call is
            # cold): a generated answer's length depends on the image, and with it the decoding steps.
            images = [_png(next(seeds), side) for _ in range(batch)]
            for mode in COLD_MODES:
                _sync(device)
                start = time.perf_counter()
                _cold_call(engines, mode, images)
                _sync(device)
                if round_:
                    times[mode].append(time.perf_counter() - start)
        out[batch] = {mode: statistics.median(values) for mode, values in times.items()}
    return out


def _cold_call(engines: dict, mode: str, images: list[bytes]) -> None:
    import torch

    from services.teacher.engine.extraction import InteractionRequest

    forced = mode in ("forced", "forward")
    requests = [InteractionRequest(image=image, label="circle", background="stripes" if forced else None)
                for image in images]
    engine = engines["decode" if mode == "decode" else "second-pass"]
    if mode != "forward":
        engine.extract_batch(requests)
        return
    # The floor: one forward over the forced prompts (prompt + image + whole answer), no capture.
    # With no session active the lfi_capture kernel is plain SDPA, so the kernel is not switched.
    runs = [run for i, r in enumerate(requests) for run in engine._runs(i, engine.validate(r)[0])]
    encoded = engine.encoder.encode([engine.encoder.expand(r.plan.prompt_ids) for r in runs], [r.image for r in runs])
    with torch.no_grad():
        engine.vlm.model.model(**encoded)


def print_cold_table(seconds: dict[int, dict[str, float]]) -> None:
    print("\ncold maps/s through the engine (median per call; x = maps/s over second-pass's)")
    print(f"{'batch':>5} " + " ".join(f"{m:>18}" for m in COLD_MODES))
    for batch, by_mode in seconds.items():
        ref = by_mode["second-pass"]
        cells = [f"{batch / s:>9.2f} ({ref / s:>5.2f}x)" for s in by_mode.values()]
        print(f"{batch:>5} " + " ".join(f"{c:>18}" for c in cells))


def cold_part(args) -> None:
    import torch

    from services.teacher.engine.capture import CAPTURE_IMPLEMENTATION
    from services.teacher.engine.loading import parse_dtype
    from services.teacher.tiny.build import build_tiny_model

    torch.set_grad_enabled(False)
    model, processor = build_tiny_model(args.preset, device=args.device, dtype=parse_dtype(args.dtype))
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)  # as load_vlm sets it for the engine
    batches = [int(b) for b in args.batches.split(",")]
    print(f"preset={args.preset} device={args.device} dtype={args.dtype} repeats={args.repeats}")
    print_cold_table(cold_map_seconds(model, processor, batches, args.repeats, args.device))


def forward_part(args) -> None:
    """The forward table: each (mode, batch) timed in its own subprocess, memory in another."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-bench")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--modes", default="plain,capture,eager")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="forward,cold", help="forward, cold, or both")
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
    parts = args.parts.split(",")
    if "forward" in parts:
        forward_part(args)
    if "cold" in parts:
        cold_part(args)


if __name__ == "__main__":
    main()
