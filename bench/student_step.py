"""Student speed: I-ViT / ViT training-step time, and epoch time with maps from the local cache.

1. Step time at a chosen geometry (default S/16: 224 px, batch 32), ViT and I-ViT interleaved in
   one run so machine noise hits both alike; the ratio is what counts (paper FLOPs: x1.17).
2. Epoch time of an I-ViT on the synthetic set with maps read from the teacher client's local
   disk cache (a fresh `TeacherMaps`, as after a worker restart) vs maps already in memory.
   A real teacher (redis-server + uvicorn, tiny model) fills the cache first; during the timed
   epochs it is not asked (checked).

    python bench/student_step.py [--model vit-s16] [--batch 32] [--steps 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.student.data import discover
from services.student.maps import MapRequest, TeacherMaps
from services.student.model import build_student, count_flops, count_parameters
from services.student.trainer import TrainConfig, Trainer
from shared.job_spec import JobSpec
from shared.synth import generate
from shared.teacher_client import TeacherClient
from tests.support.processes import TEAM_KEYS, RedisServer


def step_times(model_name: str, batch: int, steps: int) -> dict[str, list[float]]:
    models = {name: build_student(model_name, 200, mode) for name, mode in (("ViT", "off"), ("I-ViT", "full"))}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    size = models["ViT"].config.image_size
    grid = size // models["ViT"].config.patch_size
    pixels = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 200, (batch,))
    target = torch.softmax(torch.randn(batch, grid * grid), -1)
    valid = torch.ones(batch, dtype=torch.bool)
    from services.student.alignment import alignment_loss

    def step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        start = time.perf_counter()
        out = model.forward_interactions(pixels)
        loss = torch.nn.functional.cross_entropy(out.logits, labels)
        if out.alignment:
            loss = loss + alignment_loss(out.alignment, target, valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"ViT": [], "I-ViT": []}
    for name in times:  # warm-up
        step(name)
    for _ in range(steps):
        for name in times:
            times[name].append(step(name))
    return times


class InMemoryMaps:
    def __init__(self, maps: dict[str, object]) -> None:
        self.maps = maps

    def fetch(self, requests):
        return [self.maps[r.sample.rel] for r in requests]


def epoch_times(tmp: Path, epochs: int) -> tuple[list[float], list[float], dict]:
    from bench.teacher_service import start_teacher

    root = tmp / "synth"
    generate(root, n_train_per_class=100, n_val_per_class=0, n_shifted_per_class=0, seed=0)
    data = discover(root)
    redis = RedisServer(tmp).start()
    teacher = start_teacher(tmp, "builtin:tiny", redis)
    try:
        client = TeacherClient(teacher.url, TEAM_KEYS["alpha"])
        from shared.images import decode_image

        requests = [MapRequest(s, decode_image(s.path.read_bytes()), data.label_word(s.label))
                    for s in data.train.samples]
        filled = TeacherMaps(client, cache_dir=tmp / "maps")
        arrays = filled.fetch(requests)
        in_memory = InMemoryMaps({r.sample.rel: a for r, a in zip(requests, arrays, strict=True)})
        cached_runs, memory_runs, stats = [], [], {}
        for i in range(epochs):
            for kind in ("cache", "memory"):
                source = TeacherMaps(client, cache_dir=tmp / "maps") if kind == "cache" else in_memory
                if kind == "cache":  # keys as a running job knows them after its first epoch
                    source._keys = dict(filled._keys)
                config = TrainConfig.from_spec(JobSpec(dataset="synth", epochs=1, batch_size=32, seed=i),
                                               step_checkpoints=False)
                trainer = Trainer(config, data, tmp / f"run-{kind}-{i}", map_source=source)
                start = time.perf_counter()
                trainer.run()
                (cached_runs if kind == "cache" else memory_runs).append(time.perf_counter() - start)
                if kind == "cache":
                    stats = dict(source.stats)
        return cached_runs, memory_runs, stats
    finally:
        teacher.stop()
        redis.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit-s16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")

    vit, ivit = build_student(args.model, 200, "off"), build_student(args.model, 200, "full")
    print(f"\n{args.model}: params ViT {count_parameters(vit)['total'] / 1e6:.2f}M, "
          f"I-ViT {count_parameters(ivit)['total'] / 1e6:.2f}M; forward GFLOPs/image ViT "
          f"{count_flops(vit) / 1e9:.2f}, I-ViT {count_flops(ivit) / 1e9:.2f} "
          f"(x{count_flops(ivit) / count_flops(vit):.3f})")
    del vit, ivit

    times = step_times(args.model, args.batch, args.steps)
    print(f"\ntraining step, {args.model}, batch {args.batch} ({args.steps} timed steps each, interleaved)")
    print(f"{'model':<8}{'median s':>10}{'min s':>10}{'images/s':>10}")
    for name, values in times.items():
        print(f"{name:<8}{statistics.median(values):>10.2f}{min(values):>10.2f}"
              f"{args.batch / statistics.median(values):>10.1f}")
    ratio = statistics.median(times["I-ViT"]) / statistics.median(times["ViT"])
    print(f"I-ViT / ViT step time: {ratio:.3f} (goal <= 1.25)")

    with tempfile.TemporaryDirectory() as tmp:
        cached, memory, stats = epoch_times(Path(tmp), args.epochs)
    print("\nI-ViT vit-tiny epoch on 400 synthetic images, batch 32")
    print(f"{'maps':<28}{'median s':>10}{'runs':>28}")
    print(f"{'local disk cache (fresh)':<28}{statistics.median(cached):>10.2f}{[round(v, 2) for v in cached]!s:>28}")
    print(f"{'already in memory':<28}{statistics.median(memory):>10.2f}{[round(v, 2) for v in memory]!s:>28}")
    print(f"cache / memory: {statistics.median(cached) / statistics.median(memory):.3f} (goal <= 1.05); "
          f"map lookups in the last cached epoch: {stats}")


if __name__ == "__main__":
    main()
