"""Train the tiny LLaVA-architecture teacher on the synthetic shapes, so its maps mean something.

The random-weight `builtin:tiny` exercises the machinery but looks nowhere in particular. This
trains the same classes (CLIP tower, projector, Llama) with plain next-token loss on the
paper's answer format, ``{'foreground': 'circle', 'background': 'stripes'}``, for images of
`shared.synth` drawn with every background equally likely (so the teacher must read the shape
to name the foreground and the texture to name the background). Nothing in the loss mentions
where the object is: whether the answer words' attention lands on it is measured afterwards
(`bench/teacher_maps.py`), not trained in.

Every image, prompt variant and weight follows from `TinyTrainConfig.seed` and
`TinyTrainConfig.data_seed`; on one machine two runs give the same weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from services.teacher.engine.prompts import TEMPLATES
from services.teacher.tiny.build import PRESETS, build_tiny_model
from shared.synth import BACKGROUNDS, CLASSES, UNIFORM_CORRELATION, make_sample

TEMPLATE = TEMPLATES["fg-bg-vocab"]


@dataclass(frozen=True)
class TinyTrainConfig:
    seed: int = 0  # weights and the order of prompt variants
    data_seed: int = 1000  # images: a stream disjoint from the student's default synthetic set (seed 0)
    vision_steps: int = 1500  # stage 1: the CLIP tower learns to see (shape and texture, from its mean token)
    vision_lr: float = 3e-3
    steps: int = 600  # stage 2: projector and language model learn to answer (tower frozen, as LLaVA does)
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 25
    weight_decay: float = 0.01
    preset: str = "tiny-synth"
    image_size: int = 64  # side of the rendered synthetic images
    vocabulary_share: float = 0.5  # fraction of prompts listing the class words (the rest: label-only form)
    eval_images: int = 64

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for name in ("steps", "batch_size", "eval_images", "image_size", "vision_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "data_seed", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "vision_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.vocabulary_share <= 1:
            raise ValueError(f"vocabulary_share must be in [0, 1], got {self.vocabulary_share}")


@dataclass
class TinyTrainReport:
    out_dir: Path
    config: TinyTrainConfig
    seconds: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)


def answer_text(shape: str, background: str) -> str:
    """The answer exactly as the engine forces and parses it (template fg-bg-vocab)."""
    return TEMPLATE.forced_prefix.format(label=shape) + background + "'}"


class ExampleBuilder:
    """Synthetic image -> (token ids with image tokens expanded, index where the answer starts)."""

    def __init__(self, processor, config, n_image_tokens: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.n_image_tokens = n_image_tokens
        self.config = config

    def chat_text(self, vocabulary: list[str] | None) -> str:
        question = TEMPLATE.question(vocabulary=vocabulary)
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def tokens(self, shape: str, background: str, vocabulary: list[str] | None) -> tuple[list[int], int]:
        prompt = self.chat_text(vocabulary)
        full = [*self.tokenizer(prompt + answer_text(shape, background)).input_ids, self.tokenizer.eos_token_id]
        base = self.tokenizer(prompt).input_ids
        start = next((i for i, (a, b) in enumerate(zip(base, full, strict=False)) if a != b), len(base))
        expanded, answer_start = [], 0
        for i, token in enumerate(full):
            if i == start:
                answer_start = len(expanded)
            expanded.extend([token] * self.n_image_tokens if token == self.image_token_id else [token])
        return expanded, answer_start

    def batch(self, step: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        cfg = self.config
        sequences, starts, images = [], [], []
        for j in range(cfg.batch_size):
            sample = _sample(cfg, step * cfg.batch_size + j)
            vocabulary = None
            if rng.random() < cfg.vocabulary_share:
                vocabulary = [CLASSES[i] for i in rng.permutation(len(CLASSES))]
            ids, start = self.tokens(sample.cls, sample.background, vocabulary)
            sequences.append(ids)
            starts.append(start)
            images.append(Image.fromarray(sample.image))
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for b, (seq, start) in enumerate(zip(sequences, starts, strict=True)):
            input_ids[b, : len(seq)] = torch.tensor(seq)
            attention[b, : len(seq)] = 1
            labels[b, start : len(seq)] = input_ids[b, start : len(seq)]
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixels, "labels": labels}


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _sample(config: TinyTrainConfig, k: int):
    return make_sample("train", k % len(CLASSES), k // len(CLASSES), seed=config.data_seed,
                       correlation=UNIFORM_CORRELATION, image_size=config.image_size)


def pretrain_vision(model, processor, config: TinyTrainConfig,
                    on_step: Callable[[str, int, float], None] | None = None) -> list[float]:
    """Stage 1, in place of the CLIP pretraining a real LLaVA inherits.

    CLIP learns from (image, caption) pairs; here the captions are "a <shape> on <texture>", so
    contrastive training against the 16 possible captions reduces to two classification heads
    on the tower's mean token (the CLS token learned nothing in 300 steps; the mean does). Only the
    whole image is labelled: no patch is told where the shape is.
    """
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(width, len(CLASSES)),
                                 "texture": torch.nn.Linear(width, len(BACKGROUNDS))})
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.vision_lr, weight_decay=config.weight_decay)
    warmup = max(1, config.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, warmup, config.vision_steps))
    losses = []
    offset = 10_000_000  # a part of the image stream stage 2 never reaches
    tower.train()
    for step in range(config.vision_steps):
        samples = [_sample(config, offset + step * config.batch_size + j) for j in range(config.batch_size)]
        pixels = processor.image_processor(images=[Image.fromarray(s.image) for s in samples],
                                           return_tensors="pt")["pixel_values"]
        pooled = tower(pixel_values=pixels).last_hidden_state.mean(1)
        shape = torch.tensor([CLASSES.index(s.cls) for s in samples])
        texture = torch.tensor([BACKGROUNDS.index(s.background) for s in samples])
        loss = (torch.nn.functional.cross_entropy(heads["shape"](pooled), shape)
                + torch.nn.functional.cross_entropy(heads["texture"](pooled), texture))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step("vision", step, losses[-1])
    return losses


def train_tiny_teacher(
    out_dir: str | Path,
    config: TinyTrainConfig | None = None,
    *,
    on_step: Callable[[str, int, float], None] | None = None,
    evaluate: bool = True,
) -> TinyTrainReport:
    """Train, save a folder `LlavaForConditionalGeneration.from_pretrained` loads, and evaluate it."""
    config = config or TinyTrainConfig()
    out = Path(out_dir)
    began = time.perf_counter()
    model, processor = build_tiny_model(config.preset, seed=config.seed)
    preset = PRESETS[config.preset]
    builder = ExampleBuilder(processor, config, preset.image_tokens)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    pretrain_vision(model, processor, config, on_step)
    model.model.vision_tower.requires_grad_(False)
    model.train()
    model.model.vision_tower.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, config.warmup_steps, config.steps))
    losses: list[float] = []
    for step in range(config.steps):
        batch = builder.batch(step, rng)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step("answer", step, losses[-1])
    model.requires_grad_(True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = TinyTrainReport(out, config, time.perf_counter() - began, float(np.mean(losses[-10:])), losses)
    if evaluate:
        report.evaluation = evaluate_answers(out, config)
    write_build_record(report)
    return report


def write_build_record(report: TinyTrainReport, extra: dict | None = None) -> None:
    path = report.out_dir / "lfi_build.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update({
        "builder": "lfi teacher train-tiny", "preset": report.config.preset, "seed": report.config.seed,
        "shapes": asdict(PRESETS[report.config.preset]), "training": asdict(report.config),
        "train_seconds": round(report.seconds, 1), "final_loss": round(report.final_loss, 4),
        "evaluation": report.evaluation,
    })
    record.update(extra or {})
    path.write_text(json.dumps(record, indent=2))


def finish_checkpoint(report: TinyTrainReport, *, images: int = 64) -> dict:
    """Score the maps on held-out images, store the best layers/rows as the checkpoint's default."""
    from services.teacher.tiny.map_quality import choose_extraction, held_out_samples, write_recommendation

    samples = held_out_samples(images, image_size=report.config.image_size)
    chosen, tried = choose_extraction(report.out_dir, samples)
    best = max(tried, key=lambda t: t.combined)
    evidence = {
        "held_out_images": images, "area_fraction": round(best.area, 4),
        "chosen_mass_inside": round(best.combined, 4), "chosen_ratio": round(best.ratio, 2),
        "per_layer_ratio": {t.settings["rows"]: {str(k): round(v / t.area, 2) for k, v in t.per_layer.items()}
                            for t in tried if t.per_layer},
        "all_layers_ratio": {t.settings["rows"]: round(t.ratio, 2) for t in tried if t.per_layer},
    }
    write_recommendation(report.out_dir, chosen, evidence)
    write_build_record(report, {"maps": evidence})
    return evidence


def evaluate_answers(model_dir: Path, config: TinyTrainConfig) -> dict:
    """Answer accuracy on held-out images: the engine chooses the foreground from the class list."""
    from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
    from services.teacher.tiny.map_quality import held_out_samples

    engine = InteractionEngine.from_pretrained(str(model_dir))
    # the "val" split of the training stream's seed: images the teacher never trained on
    samples = held_out_samples(config.eval_images, seed=config.data_seed, image_size=config.image_size)
    results = engine.extract_batch([InteractionRequest(image=Image.fromarray(s.image), vocabulary=list(CLASSES))
                                    for s in samples])
    fore = ["".join(r.foreground_tokens).strip() == s.cls for r, s in zip(results, samples, strict=True)]
    back = ["".join(r.background_tokens).strip() == s.background for r, s in zip(results, samples, strict=True)]
    return {"images": len(results), "foreground_accuracy": round(float(np.mean(fore)), 3),
            "background_accuracy": round(float(np.mean(back)), 3)}
