"""Greedy decoding of a left-padded batch: our own loop instead of `model.generate`.

The answers are short (a word or two, at most a template's budget of tokens), so the per-step cost
of `generate` weighed on every cold map: logits processors and stopping criteria over the whole
`input_ids` each step, its input preparation, and a KV cache grown by concatenation, which at
batch 8 copies the whole cache (image and prompt keys of every layer) once per new token. Here:
- the KV cache is allocated once for the prompt plus the longest possible answer and written in
  place (`GrowingLayer`); each step's attention reads a view of its filled part;
- the attention mask is one preallocated tensor, viewed up to the current length;
- the stop check (EOS, stop characters, per-row budget) runs on each row's Python token list
  every step, and the loop ends as soon as every row is done.
The tokens are the ones `generate` picks (greedy, the same masking of the vocabulary choice, the
same per-row stops; tests/teacher/engine/test_decoding.py checks it against `generate`).

Not done here (GPU, untested): a static-shape cache and torch.compile / CUDA graphs for the step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from services.teacher.engine.answer import AnswerPlan, free_part, max_new_tokens, trim_generated

# Called (always) once decoding ends, with the answers and, per row, whether its last answer token was
# never fed back in (so its own attention row was never computed); True feeds them in one more step.
FeedLast = Callable[[list[list[int]], list[bool]], bool]


class GrowingLayer(DynamicLayer):
    """A layer's KV cache written in place into buffers sized once; `keys`/`values` view the filled part.

    A `DynamicLayer` to everything that reads it (mask sizes, sequence length), so the model treats
    it as the usual growing cache.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.filled = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads, _, _ = key_states.shape
        self._keys = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
        self._values = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache sized for {self.capacity} positions, asked for {end}")
        self._keys[:, :, self.filled : end] = key_states
        self._values[:, :, self.filled : end] = value_states
        self.filled = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def growing_cache(model: torch.nn.Module, capacity: int) -> DynamicCache:
    cache = DynamicCache(config=model.config.get_text_config())
    cache.layers = [GrowingLayer(capacity) for _ in range(model.config.get_text_config().num_hidden_layers)]
    return cache


def _cache_keyword(model: torch.nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); the GPU box may run an older 5.x."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class TransformersAnswerer:
    """Greedy answers of a batch of plans, left-padded, on the LLaVA model of this process.

    It runs the model here, so the attention capture can ride along inside its prefill and decoding
    steps (`capture="decode"`); `feed_last` lets the capture have the last answer token's own row.
    """

    name = "transformers"
    captures_while_decoding = True

    def __init__(self, model: torch.nn.Module, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache_keyword = _cache_keyword(model)

    @torch.no_grad()
    def generate(self, plans: Sequence[AnswerPlan], batch: dict[str, torch.Tensor], images=None,
                 feed_last: FeedLast | None = None) -> list[list[int]]:
        """Each row's new tokens, trimmed by `trim_generated`; one forward per token, none after the last
        unless `feed_last` asks for it."""
        n_rows, length = batch["input_ids"].shape
        budget = max_new_tokens(plans)
        device = batch["input_ids"].device
        capacity = length + budget + (feed_last is not None)
        mask = torch.ones(n_rows, capacity, dtype=batch["attention_mask"].dtype, device=device)
        mask[:, :length] = batch["attention_mask"]
        # Left padding: each row counts its positions from its own first token, as `generate` does.
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        cache = growing_cache(self.model, capacity)
        step_inputs = {self.cache_keyword: cache, "use_cache": True}
        out = self.model(**batch, position_ids=positions, logits_to_keep=1, **step_inputs)
        next_position = positions[:, -1:] + 1
        generated: list[list[int]] = [[] for _ in plans]
        done = [False] * n_rows
        for step in range(budget):
            tokens = self._pick(out.logits[:, -1], plans, generated, done)
            if all(done) or step == budget - 1:
                break
            end = length + step + 1
            out = self.model(input_ids=torch.tensor(tokens, device=device)[:, None], attention_mask=mask[:, :end],
                             position_ids=next_position + step, logits_to_keep=1, **step_inputs)
        answers = [trim_generated(plan, row, self.tokenizer) for plan, row in zip(plans, generated, strict=True)]
        # A row's last kept token was fed back in iff a forward ran after it was written.
        unfed = [len(answer) == len(row) and bool(answer) for answer, row in zip(answers, generated, strict=True)]
        if feed_last is not None and feed_last(answers, unfed):
            steps = len(generated[0])
            # Only the attention rows are wanted: the language model without the LM head.
            self.model.model(input_ids=torch.tensor([g[-1] for g in generated], device=device)[:, None],
                             attention_mask=mask[:, : length + steps], position_ids=next_position + steps - 1,
                             **step_inputs)
        return answers

    def _pick(self, logits: torch.Tensor, plans: Sequence[AnswerPlan], generated: list[list[int]],
              done: list[bool]) -> list[int]:
        """The next token of every row (pad once a row is done), appended; marks the rows that are now done."""
        scores = logits.float()
        for row, plan in enumerate(plans):
            if plan.trie is None or done[row]:
                continue
            node, _ = plan.trie.walk(generated[row])
            if node is not None:  # still choosing its vocabulary word: only the trie's next tokens
                allowed = torch.tensor(sorted(node.children), device=scores.device)
                keep = scores[row, allowed]
                scores[row].fill_(float("-inf"))
                scores[row, allowed] = keep
        tokens = scores.argmax(dim=-1).tolist()
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        for row, plan in enumerate(plans):
            if done[row]:
                tokens[row] = pad
            generated[row].append(tokens[row])
            done[row] = done[row] or tokens[row] == eos or self._stops(plan, generated[row])
        return tokens

    def _stops(self, plan: AnswerPlan, generated: list[int]) -> bool:
        """The row's free part holds a stop character or has reached the template's budget."""
        free = free_part(plan, generated)
        if len(free) >= plan.template.max_new_tokens:
            return True
        if plan.template.stop_chars and free:
            text = self.tokenizer.decode(free)
            return any(c in text for c in plan.template.stop_chars)
        return False
