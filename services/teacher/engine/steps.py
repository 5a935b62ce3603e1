"""What a chunk of runs goes through: the answer (what the VLM says) and the capture (where its words look).

Two ways (`capture=` on the engine):
- "decode": one pass. The capture kernel rides along inside the answer's decoding
  (decoding.TransformersAnswerer): the prefill keeps the rows of the prompt's tail (the forced
  answer and the row that predicts the first new token), each decoding step the row of the token
  fed back in. `decode_step`.
- "second-pass": `answer_step` generates, then `capture_step` runs a teacher-forced forward over
  prompt + answer. Kept for checking: both give the same maps (tests/teacher/engine/test_decode.py).
A run whose whole answer is forced needs no generation: `forced_step`, one forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from services.teacher.engine.answer import Answerer, token_offsets
from services.teacher.engine.capture import capturing, decode_capturing
from services.teacher.engine.encoding import BatchEncoder
from services.teacher.engine.extraction_settings import ExtractionSettings
from services.teacher.engine.prompts import Span, parse_answer
from services.teacher.engine.runs import Run


def answer_step(runs: Sequence[Run], answerer: Answerer, encoder: BatchEncoder) -> None:
    """Generate each run's answer, parse it, and pick the answer tokens that spell its fore/background words."""
    images = [r.image for r in runs]
    batch = encoder.encode([encoder.expand(r.plan.prompt_ids) for r in runs], images)
    read_answers(runs, answerer.generate([r.plan for r in runs], batch, images=images), encoder.tokenizer)


def read_answers(runs: Sequence[Run], generated: Sequence[list[int]], tokenizer) -> None:
    """Each run's answer text (forced part + new tokens), parsed, and the token indices of its words."""
    for run, new_tokens in zip(runs, generated, strict=True):
        run.generated = new_tokens
        answer_ids = run.plan.prompt_ids[run.plan.answer_start :] + new_tokens
        text, offsets = token_offsets(tokenizer, answer_ids)
        run.answer = text.strip()
        run.parsed = parse_answer(run.plan.template, text, run.plan.vocabulary)
        run.fore_rows = _tokens_in(run.parsed.foreground, offsets, text)
        run.back_rows = _tokens_in(run.parsed.background, offsets, text)
        pieces = [tokenizer.decode([t]) for t in answer_ids]
        run.fore_tokens = [pieces[i] for i in run.fore_rows]
        run.back_tokens = [pieces[i] for i in run.back_rows]


@torch.no_grad()
def decode_step(runs: Sequence[Run], answerer: Answerer, encoder: BatchEncoder, model: torch.nn.Module,
                settings: ExtractionSettings, layers: list[int]) -> None:
    """Answer and capture in one pass: the rows are kept while the answer's decoding computes them anyway."""
    images = [r.image for r in runs]
    batch = encoder.encode([encoder.expand(r.plan.prompt_ids) for r in runs], images)
    length = batch["input_ids"].shape[1]
    forced = [len(r.plan.prompt_ids) - r.plan.answer_start for r in runs]  # answer tokens inside the prompt
    cols = torch.stack([(ids == encoder.image_token_id).nonzero().squeeze(1) for ids in batch["input_ids"]])
    word_rows = settings.rows == "word"

    def feed_last(generated: list[list[int]], unfed: list[bool]) -> bool:
        # A word's own row exists once the word is fed back in: one step more only where a row's
        # last answer token is one of its words' and was never fed (it ended the decoding).
        read_answers(runs, generated, encoder.tokenizer)
        return word_rows and any(
            last and (n_forced + len(run.generated) - 1) in (run.fore_rows + run.back_rows)
            for run, n_forced, last in zip(runs, forced, unfed, strict=True))

    with decode_capturing(model, cols, max(forced) + 1, batch["attention_mask"], layers=layers,
                          heads=settings.heads, head_reduce=settings.head_reduce) as session:
        answerer.generate([r.plan for r in runs], batch, images=images, feed_last=feed_last)
    captured = torch.stack([session.rows(layer) for layer in layers], dim=0).cpu().numpy()  # (L, B, R, N)
    shift = 0 if word_rows else 1
    for b, (run, n_forced) in enumerate(zip(runs, forced, strict=True)):
        # Left padding: answer token i sits at `length - n_forced + i` in every row of the batch.
        first = length - n_forced - session.first_position - shift
        _keep_rows(run, captured[:, b], [first + i for i in run.fore_rows], [first + i for i in run.back_rows])


def forced_step(runs: Sequence[Run], model: torch.nn.Module, encoder: BatchEncoder,
                settings: ExtractionSettings, layers: list[int]) -> None:
    """Runs whose whole answer is forced (already in the prompt): no generation, one forward."""
    read_answers(runs, [[] for _ in runs], encoder.tokenizer)
    capture_step(runs, model, encoder, settings, layers)


def _keep_rows(run: Run, captured: np.ndarray, fore: list[int], back: list[int]) -> None:
    """Mean over the word rows of (L, R, N) captured rows: the run's (L, N) fore and back attention."""
    run.fore = captured[:, fore].mean(axis=1) if fore else None
    run.back = captured[:, back].mean(axis=1) if back else None


@torch.no_grad()
def capture_step(runs: Sequence[Run], model: torch.nn.Module, encoder: BatchEncoder,
                 settings: ExtractionSettings, layers: list[int]) -> None:
    """One forward pass over prompt + answer; fills each run's fore/back attention, (L, N) per captured layer."""
    sequences = [encoder.expand(r.plan.prompt_ids) + r.generated for r in runs]
    batch = encoder.encode(sequences, [r.image for r in runs])
    rows, cols = _rows_and_columns(runs, sequences, batch["input_ids"], encoder, settings.rows)
    # Left padding shifts every position; RoPE must see each sequence's own positions.
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with capturing(model, rows, cols, layers=layers, heads=settings.heads,
                   head_reduce=settings.head_reduce) as session:
        # Only the attention is needed: skip the LM head over the whole sequence.
        model.model(**batch, position_ids=position_ids)
    stacked = torch.stack([session.captured[layer] for layer in layers], dim=0).cpu().numpy()  # (L, B, A, N)
    for b, run in enumerate(runs):
        n_fore, n_back = len(run.fore_rows), len(run.back_rows)
        _keep_rows(run, stacked[:, b], list(range(n_fore)), list(range(n_fore, n_fore + n_back)))


def _rows_and_columns(runs: Sequence[Run], sequences: Sequence[list[int]], input_ids: torch.Tensor,
                      encoder: BatchEncoder, rows_of: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions (answer words, fore then back) and key positions (image tokens) of each sequence."""
    length = input_ids.shape[1]
    shift = 1 if rows_of == "predicting" else 0
    rows, cols = [], []
    for b, (run, seq) in enumerate(zip(runs, sequences, strict=True)):
        # answer token i sits at (left padding) + (expanded prompt before the answer) + i
        offset = length - len(seq) + len(encoder.expand(run.plan.prompt_ids[: run.plan.answer_start]))
        rows.append([offset + i - shift for i in run.fore_rows + run.back_rows] or [length - 1])
        cols.append((input_ids[b] == encoder.image_token_id).nonzero().squeeze(1))
    # pad with a repeated row: the capture needs a rectangle, and the extra rows are never read
    width = max(len(r) for r in rows)
    return torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows]), torch.stack(cols)


def _tokens_in(spans: Sequence[Span], offsets: list[tuple[int, int]], text: str) -> list[int]:
    """Indices of the tokens of the words in `spans`: those that overlap a word and carry a letter or
    digit, and those lying wholly inside one (the apostrophe of "potter's", the hyphen of "t-shirt")."""
    picked = []
    for i, (start, end) in enumerate(offsets):
        inside = any(s.start <= start and end <= s.end for s in spans) and end > start
        if not inside and not any(c.isalnum() for c in text[start:end]):
            continue
        if any(start < s.end and s.start < end for s in spans):
            picked.append(i)
    return picked
