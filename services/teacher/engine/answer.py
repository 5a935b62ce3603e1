"""The answer step: what the VLM says, token by token, before we look at its attention.

Three ways an answer starts (the template decides the words):
- forced:     the label is known; the template's answer is written up to the
              background part and the model writes only the rest;
- vocabulary: the model chooses the foreground word, constrained to the
              vocabulary's token sequences (a trie), then writes the background;
- free:       the model writes everything (prompts 2 and 3).
Prompts are tokenised as whole strings and split where the token sequences of
the alternatives diverge, so no tokenizer's boundary merges can misalign them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from services.teacher.engine.prompts import PromptTemplate


@dataclass
class TokenTrie:
    """Token sequences the model may choose between; a node with `end` completes a choice."""

    children: dict[int, TokenTrie] = field(default_factory=dict)
    end: bool = False

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> TokenTrie:
        root = cls()
        for seq in sequences:
            node = root
            for token in seq:
                node = node.children.setdefault(token, cls())
            node.end = True
        return root

    def walk(self, tokens: Sequence[int]) -> tuple[TokenTrie | None, int]:
        """Follow `tokens`; returns the node still choosing (None once a choice is complete) and its depth."""
        node = self
        for depth, token in enumerate(tokens):
            if node.end or token not in node.children:
                return None, depth
            node = node.children[token]
        return (None, len(tokens)) if node.end else (node, len(tokens))


@dataclass
class AnswerPlan:
    """One sequence for the VLM: its prompt ids (image token once) and how its answer proceeds."""

    prompt_ids: list[int]
    answer_start: int  # index in prompt_ids where the answer (forced part) begins
    template: PromptTemplate
    trie: TokenTrie | None = None
    vocabulary: Sequence[str] | None = None
    complete: bool = False  # the whole answer is forced (in prompt_ids): nothing to generate
    question: str = ""  # the prompt text the model is asked, up to where its answer begins


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def plan_answer(
    tokenizer, template: PromptTemplate, chat_text: str, *, label: str | None, vocabulary: Sequence[str] | None,
    background: str | None = None,
) -> AnswerPlan:
    base = tokenizer(chat_text).input_ids
    # A forced label is the one word the foreground can be: the parser takes it whole.
    forced = (label,) if label is not None else None
    if label is not None and template.forced_answer is not None and (background or not template.has_background):
        full = tokenizer(chat_text + template.forced_answer.format(label=label, background=background)).input_ids
        return AnswerPlan(full, _common_prefix(base, full), template, vocabulary=forced, complete=True,
                          question=chat_text)
    if label is not None and template.forced_prefix is not None:
        full = tokenizer(chat_text + template.forced_prefix.format(label=label)).input_ids
        return AnswerPlan(full, _common_prefix(base, full), template, vocabulary=forced, question=chat_text)
    if template.uses_vocabulary and vocabulary:
        candidates = tokenizer(
            [chat_text + template.choice_prefix + word + template.choice_suffix for word in vocabulary]
        ).input_ids
        shared = min(_common_prefix(candidates[0], c) for c in candidates)
        if len(candidates) == 1:
            shared = _common_prefix(base, candidates[0])
        start = min(shared, _common_prefix(base, candidates[0]))
        trie = TokenTrie.build([c[shared:] for c in candidates])
        return AnswerPlan(candidates[0][:shared], start, template, trie=trie, vocabulary=vocabulary,
                          question=chat_text)
    return AnswerPlan(base, len(base), template, question=chat_text)


def free_part(plan: AnswerPlan, generated: Sequence[int]) -> list[int]:
    if plan.trie is None:
        return list(generated)
    node, depth = plan.trie.walk(generated)
    return [] if node is not None else list(generated[depth:])


def trim_generated(plan: AnswerPlan, generated: Sequence[int], tokenizer) -> list[int]:
    """Cut a row's new tokens after EOS/padding and after the token that closed the free part."""
    special = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    tokens: list[int] = []
    for token in generated:
        if token in special:
            break
        tokens.append(token)
    constrained = len(tokens) - len(free_part(plan, tokens))
    tokens = tokens[: constrained + plan.template.max_new_tokens]
    if plan.template.stop_chars:
        for i in range(constrained, len(tokens)):
            if any(c in tokenizer.decode(tokens[constrained : i + 1]) for c in plan.template.stop_chars):
                return tokens[: i + 1]
    return tokens


def token_offsets(tokenizer, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of `ids` and each token's character span in it (any tokenizer)."""
    text = tokenizer.decode(ids)
    offsets: list[tuple[int, int]] = []
    previous = 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[: i + 1]))
        end = min(max(end, previous), len(text))
        offsets.append((previous, end))
        previous = end
    return text, offsets


def max_new_tokens(plans: Sequence[AnswerPlan]) -> int:
    depth = 0
    for plan in plans:
        if plan.trie is not None:
            depth = max(depth, _trie_depth(plan.trie))
    return depth + max(plan.template.max_new_tokens for plan in plans)


def _trie_depth(node: TokenTrie) -> int:
    return 1 + max((_trie_depth(child) for child in node.children.values()), default=-1) if node.children else 0


class Answerer(Protocol):
    """Writes the answers of a batch: the new token ids of each sequence, trimmed by `trim_generated`.

    One with `captures_while_decoding = True` runs the model in this process and also takes
    `feed_last` (decoding.FeedLast), so `capture="decode"` can ride along.
    """

    name: str

    def generate(self, plans: Sequence[AnswerPlan], batch: dict[str, torch.Tensor],
                 images: Sequence | None = None) -> list[list[int]]: ...
