"""Prompt planning: the VLM sequences of a request and the tokenised prompt (AnswerPlan) of each."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from services.teacher.engine.answer import AnswerPlan, plan_answer
from services.teacher.engine.prompts import PromptTemplate
from services.teacher.engine.requests import ValidRequest
from shared.errors import InvalidRequest
from shared.schemas import Box

MEMO_SIZE = 4096
# Room left in the context beyond prompt, image tokens and answer (special tokens, stop checks).
CONTEXT_MARGIN = 32


class PromptPlanner:
    """Builds each sequence's AnswerPlan; memoised, since a dataset asks the same question of every image."""

    def __init__(self, processor, *, n_image_tokens: int, max_positions: int) -> None:
        self.processor = processor
        self.n_image_tokens = n_image_tokens
        self.max_positions = max_positions
        self._plans: dict[tuple, AnswerPlan] = {}  # read-only once built
        self._lock = threading.Lock()

    def sequences(self, request: ValidRequest) -> list[tuple[Box | None, AnswerPlan]]:
        """One sequence for a classification request; one per box (drawn alone) for a dense one."""
        template = request.template
        if not request.task.is_dense:
            question = template.question(vocabulary=request.vocabulary)
            return [(None, self.plan(template, question, request.label, request.vocabulary, request.background))]
        return [(box, self.plan(template, template.question(target=box.label), box.label, None, request.background))
                for box in request.boxes]

    def plan(self, template: PromptTemplate, question: str, label: str | None,
             vocabulary: Sequence[str] | None, background: str | None = None) -> AnswerPlan:
        memo_key = (template.id, template.version, question, label, tuple(vocabulary) if vocabulary else None,
                    background)
        plan = self._plans.get(memo_key)
        if plan is None:
            plan = self._build(template, question, label, vocabulary, background)
            with self._lock:  # validation threads and the GPU thread both fill it
                if len(self._plans) >= MEMO_SIZE:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[memo_key] = plan
        return plan

    def _build(self, template: PromptTemplate, question: str, label: str | None,
               vocabulary: Sequence[str] | None, background: str | None) -> AnswerPlan:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        chat_text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        plan = plan_answer(self.processor.tokenizer, template, chat_text, label=label, vocabulary=vocabulary,
                           background=background)
        budget = len(plan.prompt_ids) + self.n_image_tokens + template.max_new_tokens + CONTEXT_MARGIN
        if budget > self.max_positions:
            raise InvalidRequest(
                f"prompt is {len(plan.prompt_ids)} tokens plus {self.n_image_tokens} image tokens, over the "
                f"model's {self.max_positions}-token context; shorten the vocabulary", code="prompt_too_long"
            )
        return plan
