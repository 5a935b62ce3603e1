"""Our greedy decoding loop writes the answers `model.generate` wrote, token for token, in fewer forwards.

The reference is `generate` with the logits processor and stopping criterion the engine used
before its own loop (kept here, as the oracle): greedy, the vocabulary choice masked to the trie's
next tokens, per-row stops on the stop characters, the budget and EOS.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from services.teacher.engine.answer import AnswerPlan, free_part, max_new_tokens, trim_generated
from services.teacher.engine.decoding import GrowingLayer, TransformersAnswerer
from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
from services.teacher.engine.loading import load_vlm
from shared.schemas import Box


class VocabularyConstraint(LogitsProcessor):
    def __init__(self, plans, prompt_len: int) -> None:
        self.plans, self.prompt_len = plans, prompt_len

    def __call__(self, input_ids, scores):
        for row, plan in enumerate(self.plans):
            if plan.trie is None:
                continue
            node, _ = plan.trie.walk(input_ids[row, self.prompt_len :].tolist())
            if node is not None:
                allowed = torch.tensor(list(node.children))
                keep = scores[row, allowed].clone()
                scores[row].fill_(float("-inf"))
                scores[row, allowed] = keep
        return scores


class StopAtCharacters(StoppingCriteria):
    def __init__(self, plans, prompt_len: int, tokenizer) -> None:
        self.plans, self.prompt_len, self.tokenizer = plans, prompt_len, tokenizer

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for row, plan in enumerate(self.plans):
            free = free_part(plan, input_ids[row, self.prompt_len :].tolist())
            if len(free) >= plan.template.max_new_tokens:
                done[row] = True
            elif plan.template.stop_chars and free:
                done[row] = any(c in self.tokenizer.decode(free) for c in plan.template.stop_chars)
        return done


def reference_answers(model, tokenizer, plans: list[AnswerPlan], batch: dict) -> tuple[list[list[int]], int]:
    """generate's answers, and how many tokens it wrote per row before every row was done."""
    prompt_len = batch["input_ids"].shape[1]
    with torch.no_grad():
        output = model.generate(
            **batch, do_sample=False, max_new_tokens=max_new_tokens(plans),
            logits_processor=LogitsProcessorList([VocabularyConstraint(plans, prompt_len)]),
            stopping_criteria=StoppingCriteriaList([StopAtCharacters(plans, prompt_len, tokenizer)]),
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    answers = [trim_generated(plan, output[row, prompt_len:].tolist(), tokenizer) for row, plan in enumerate(plans)]
    return answers, output.shape[1] - prompt_len


def _png(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _requests(seed: int) -> list[InteractionRequest]:
    boxes = [Box(xyxy=[1, 2, 30, 40], label="cat"), Box(xyxy=[10, 10, 70, 50], label="dog")]
    return [
        InteractionRequest(image=_png(seed), label="circle"),
        InteractionRequest(image=_png(seed + 1), vocabulary=["circle", "square", "star"]),
        InteractionRequest(image=_png(seed + 2), prompt="single-word"),
        InteractionRequest(image=_png(seed + 3), prompt="describe"),
        InteractionRequest(image=_png(seed + 4), task="detection", boxes=boxes),
        InteractionRequest(image=_png(seed + 5, (50, 90)), vocabulary=["a b c", "dog"]),
    ]


def _batch(engine: InteractionEngine, requests: list[InteractionRequest]):
    runs = [run for i, r in enumerate(requests) for run in engine._runs(i, engine.validate(r)[0])]
    plans = [r.plan for r in runs]
    return plans, engine.encoder.encode([engine.encoder.expand(p.prompt_ids) for p in plans], [r.image for r in runs])


@pytest.mark.parametrize("checkpoint", ["tiny_dir", "tiny_gqa_dir"])
def test_the_loop_writes_what_generate_wrote(checkpoint: str, request: pytest.FixtureRequest) -> None:
    vlm = load_vlm(str(request.getfixturevalue(checkpoint)))
    engine = InteractionEngine(vlm)
    answerer = TransformersAnswerer(vlm.model, engine.tokenizer)
    for seed in (1, 20, 40):
        requests = _requests(seed)
        # all together (padded, every template) and each alone
        for group in [requests, *([r] for r in requests)]:
            plans, batch = _batch(engine, group)
            ours = answerer.generate(plans, batch)
            assert ours == reference_answers(vlm.model, engine.tokenizer, plans, batch)[0], (seed, len(group))


def test_the_loop_stops_once_every_row_is_done_and_feeds_the_last_token_only_when_asked(tiny_dir) -> None:
    vlm = load_vlm(str(tiny_dir))
    engine = InteractionEngine(vlm)
    answerer = TransformersAnswerer(vlm.model, engine.tokenizer)
    forwards: list[int] = []
    hook = vlm.model.model.language_model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        for requests in (_requests(3), _requests(3)[2:3], _requests(3)[3:4]):
            plans, batch = _batch(engine, requests)
            _, written = reference_answers(vlm.model, engine.tokenizer, plans, batch)
            for asked in (False, True):
                forwards.clear()
                seen: list = []

                def feed_last(answers, unfed, asked=asked, seen=seen):
                    seen.append((answers, unfed))
                    return asked

                answers = answerer.generate(plans, batch, feed_last=feed_last)
                # The prefill writes the first token, each step one more: as many forwards as generate
                # wrote tokens (it too stops once every row is done), plus the one asked for.
                assert len(forwards) == written + asked
                # Unfed: the rows whose last answer token was written by the last forward.
                assert seen == [(answers, [len(a) == written for a in answers])]
    finally:
        hook.remove()


def test_the_growing_cache_fills_in_place_and_refuses_to_overflow() -> None:
    layer = GrowingLayer(capacity=5)
    first = torch.randn(2, 3, 3, 4)
    keys, _ = layer.update(first, first + 1)
    storage = keys.untyped_storage().data_ptr()
    keys, values = layer.update(torch.ones(2, 3, 2, 4), torch.zeros(2, 3, 2, 4))
    assert keys.shape == (2, 3, 5, 4) and keys.untyped_storage().data_ptr() == storage
    assert torch.equal(keys[:, :, :3], first) and torch.equal(values[:, :, 3:], torch.zeros(2, 3, 2, 4))
    assert layer.get_seq_length() == 5
    with pytest.raises(RuntimeError, match="sized for 5"):
        layer.update(first[:, :, :1], first[:, :, :1])
