"""The GPU suite: one command, a few minutes, every number docs/benchmarks.md wants from a GPU box.

    PYTHONPATH=. python scripts/gpu_suite.py                     # CUDA, bf16, llava-1.5-7b-geometry
    PYTHONPATH=. python scripts/gpu_suite.py --device cpu --preset tiny --dtype float32 \
        --student vit-tiny --batches 1,2     # smoke (the tests run this)

Parts, each printed as a table:
  matmul    measured dense matmul FLOP/s (the compute floor's denominator)
  forward   one teacher forward over prompt + image + answer at LLaVA-1.5 token geometry:
            `plain` (SDPA, no maps) vs `capture` (the lfi_capture kernel keeping 12 answer rows);
            seconds, maps/s, peak memory, and time over the floor 2 x text params x tokens / rate
  cold      cold maps/s through `InteractionEngine.extract_batch`, the label forced as a training
            job asks (the background generated), distinct random images: `decode` (capture inside
            the answer's decoding, the default), `second-pass` (generate, then a teacher-forced
            forward), `forced` (background given too: one forward) and `forward` (a plain forward
            over the same prompts: the floor); bench/teacher_extract.py's `cold` part
  student   ViT vs I-ViT training step (forward, CE + alignment loss, backward, AdamW) under
            bf16 autocast: images/s and peak memory

It imports only torch, transformers, tokenizers, numpy, PIL and pydantic (carried as wheels on a bare
GPU box: see docs/benchmarks.md) and the project's own modules; no Redis, FastAPI or Celery.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

ANSWER_ROWS = 12
PROMPT_TOKENS = 80


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")


def teacher_parts(preset: str, device: str, dtype: torch.dtype, batches: list[int], repeats: int,
                  rate: float) -> None:

    from services.teacher.engine.capture import CAPTURE_IMPLEMENTATION, capturing
    from services.teacher.tiny.build import PRESETS, build_tiny_model

    torch.set_grad_enabled(False)
    started = time.perf_counter()
    model, processor = build_tiny_model(preset, device=device, dtype=dtype)
    print(f"\nteacher preset={preset}: built in {time.perf_counter() - started:.1f} s")
    config = model.config
    n_img = PRESETS[preset].image_tokens
    length = PROMPT_TOKENS + n_img
    params = sum(p.numel() for p in model.model.language_model.parameters())
    side = PRESETS[preset].image_size

    print(f"\nforward ({length} tokens, {params / 1e9:.2f}B text params, median of {repeats}, modes interleaved)")
    print(f"{'batch':>5} {'mode':>8} {'s/forward':>10} {'maps/s':>8} {'x plain':>8} {'peak MiB':>9} {'x floor':>8}")
    for batch in batches:
        generator = torch.Generator().manual_seed(batch)
        ids = torch.randint(10, 500, (batch, length), generator=generator)
        ids[:, 5:5 + n_img] = config.image_token_index
        inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                  "pixel_values": torch.randn(batch, 3, side, side, generator=generator).to(device, dtype)}
        rows = torch.arange(length - ANSWER_ROWS, length).repeat(batch, 1)
        cols = torch.arange(5, 5 + n_img).repeat(batch, 1)

        def forward(mode: str, model=model, inputs=inputs, rows=rows, cols=cols) -> None:
            impl = {"plain": "sdpa", "capture": CAPTURE_IMPLEMENTATION}[mode]
            if model.config.text_config._attn_implementation != impl:
                model.set_attn_implementation(impl)
            if mode == "capture":
                with capturing(model, rows, cols):
                    model.model(**inputs)
            else:
                model.model(**inputs)

        times: dict[str, list[float]] = {"plain": [], "capture": []}
        peaks: dict[str, float] = {}
        for mode in times:  # warm-up, and each mode's peak memory alone
            forward(mode)
            gc.collect()
            _sync(device)
            _reset_peak(device)
            forward(mode)
            _sync(device)
            peaks[mode] = _peak_mib(device)
        for _ in range(repeats):
            for mode in times:
                _sync(device)
                start = time.perf_counter()
                forward(mode)
                _sync(device)
                times[mode].append(time.perf_counter() - start)
        floor = 2 * params * length * batch / rate
        plain = statistics.median(times["plain"])
        for mode, values in times.items():
            s = statistics.median(values)
            print(f"{batch:>5} {mode:>8} {s:>10.4f} {batch / s:>8.2f} {s / plain:>8.3f} {peaks[mode]:>9.0f} "
                  f"{s / floor:>8.2f}")
        del inputs
    model.set_attn_implementation(CAPTURE_IMPLEMENTATION)  # what load_vlm sets for the engine

    from bench.teacher_extract import cold_map_seconds, print_cold_table

    print_cold_table(cold_map_seconds(model, processor, batches, repeats, device))
    decode_agreement(model, processor, batch=max(batches))
    gc.collect()
    _reset_peak(device)


def decode_agreement(model, processor, batch: int) -> None:
    """Maps from capture="decode" against capture="second-pass" on this device and dtype (the tests
    check float32 on the CPU within 1e-5; here the kernels and the dtype are the GPU's)."""
    import numpy as np

    from bench.teacher_extract import _png
    from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
    from services.teacher.engine.loading import LoadedVLM, ModelIdentity

    vlm = LoadedVLM(model, processor, ModelIdentity("random", "none"))
    side = model.config.vision_config.image_size
    requests = [InteractionRequest(image=_png(10**6 + i, side), label="circle") for i in range(batch)]
    # second-pass twice: how far the device's own run-to-run noise goes, for scale
    runs = {name: InteractionEngine(vlm, max_batch_size=batch, capture=mode).extract_batch(requests)
            for name, mode in (("decode", "decode"), ("second-pass", "second-pass"), ("again", "second-pass"))}
    for name in ("decode", "again"):
        pairs = list(zip(runs[name], runs["second-pass"], strict=True))
        same = [d.answer == s.answer for d, s in pairs]
        worst = max((float(np.abs(d.map - s.map).max() / max(s.map.max(), 1e-12)) for (d, s), ok in
                     zip(pairs, same, strict=True) if ok), default=float("nan"))
        print(f"\n{name} vs second-pass, {batch} maps: same answer {sum(same)}/{batch}, "
              f"max |difference| / map max where the answers agree = {worst:.2e}")


def student_part(size: str, device: str, batch: int, steps: int) -> None:
    from services.student.alignment import alignment_loss
    from services.student.model import build_student, count_parameters

    torch.set_grad_enabled(True)
    autocast = torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    print(f"\nstudent {size}, batch {batch}, bf16 autocast, AdamW "
          f"({steps} timed steps each, one model after the other)")
    print(f"{'model':<7} {'params M':>9} {'median s':>9} {'images/s':>9} {'peak MiB':>9}")
    results = {}
    for name, mode in (("ViT", "off"), ("I-ViT", "full")):
        torch.manual_seed(0)
        model = build_student(size, 200, mode).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        side = model.config.image_size
        grid = side // model.config.patch_size
        pixels = torch.randn(batch, 3, side, side, device=device)
        labels = torch.randint(0, 200, (batch,), device=device)
        target = torch.softmax(torch.randn(batch, grid * grid, device=device), -1)
        valid = torch.ones(batch, dtype=torch.bool, device=device)

        def step(model=model, optimizer=optimizer, pixels=pixels, labels=labels, target=target, valid=valid):
            with autocast:
                out = model.forward_interactions(pixels)
                loss = torch.nn.functional.cross_entropy(out.logits.float(), labels)
                if out.alignment:
                    loss = loss + alignment_loss([a.float() for a in out.alignment], target, valid)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()
        step()
        _sync(device)
        _reset_peak(device)
        times = []
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - start)
        results[name] = statistics.median(times)
        print(f"{name:<7} {count_parameters(model)['total'] / 1e6:>9.2f} {results[name]:>9.4f} "
              f"{batch / results[name]:>9.1f} {_peak_mib(device):>9.0f}")
        del model, optimizer
        gc.collect()
        _reset_peak(device)
    print(f"I-ViT / ViT step time: {results['I-ViT'] / results['ViT']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--preset", default="llava-1.5-7b-geometry")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--student", default="vit-b16")
    parser.add_argument("--student-batch", type=int, default=64)
    parser.add_argument("--student-steps", type=int, default=10)
    parser.add_argument("--parts", default="teacher,student")
    args = parser.parse_args()
    from services.teacher.engine.loading import parse_dtype

    dtype = parse_dtype(args.dtype)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    import transformers

    print(f"device {name}, torch {torch.__version__}, transformers {transformers.__version__}, dtype {args.dtype}")
    started = time.perf_counter()
    from bench.teacher_extract import matmul_rate

    rate = matmul_rate(args.device, args.dtype)
    print(f"matmul: {rate / 1e12:.1f} TFLOP/s")
    parts = args.parts.split(",")
    if "teacher" in parts:
        teacher_parts(args.preset, args.device, dtype, [int(b) for b in args.batches.split(",")], args.repeats, rate)
    if "student" in parts:
        student_part(args.student, args.device, args.student_batch, args.student_steps)
    print(f"\nsuite done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
