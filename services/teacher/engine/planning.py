"""Prompt planning: the VLM sequences of a request and the tokenised prompt (AnswerPlan) of each."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from services.teacher.engine.answer import AnswerPlan, plan_answer
from services.teacher.engine.prompts import SYSTEM_PROMPTS, PromptTemplate
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
        self.special_tokens = special_tokens(processor.tokenizer)

    def sequences(self, request: ValidRequest, system_prompt: str = "none") -> list[tuple[Box | None, AnswerPlan]]:
        """One sequence for a classification request; one per box (drawn alone) for a dense one.

        `system_prompt` names the system prompt (prompts.SYSTEM_PROMPTS) the request is asked under.
        """
        self.check_text(request)
        template = request.template
        if not request.task.is_dense:
            question = template.question(vocabulary=request.vocabulary)
            return [(None, self.plan(template, question, request.label, request.vocabulary, request.background,
                                     system_prompt))]
        return [(box, self.plan(template, template.question(target=box.label), box.label, None, request.background,
                                system_prompt))
                for box in request.boxes]

    def check_text(self, request: ValidRequest) -> None:
        """Refuse request text holding a special or added token of the tokenizer (422, naming it).

        Such text would be read as that token, not as words: `<image>` adds an image slot the
        image does not fill, `</s>` ends the answer early, `<pad>` is masked away.
        """
        fields = [("label", request.label), ("background", request.background)]
        fields += [("vocabulary", word) for word in request.vocabulary or ()]
        fields += [("boxes.label", box.label) for box in request.boxes]
        for name, text in fields:
            found = [token for token in self.special_tokens if text and token in text]
            if found:
                raise InvalidRequest(
                    f"{name} {text!r} holds {found[0]!r}, a special token of the model's tokenizer "
                    f"(special and added tokens: {', '.join(self.special_tokens)}); write the word without it",
                    code="special_token")

    def plan(self, template: PromptTemplate, question: str, label: str | None,
             vocabulary: Sequence[str] | None, background: str | None = None,
             system_prompt: str = "none") -> AnswerPlan:
        memo_key = (template.id, template.version, question, label, tuple(vocabulary) if vocabulary else None,
                    background, system_prompt)
        plan = self._plans.get(memo_key)
        if plan is None:
            plan = self._build(template, question, label, vocabulary, background, system_prompt)
            with self._lock:  # validation threads and the GPU thread both fill it
                if len(self._plans) >= MEMO_SIZE:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[memo_key] = plan
        return plan

    def chat_text(self, question: str, system_prompt: str = "none") -> str:
        """The prompt text: the system prompt, then the user turn through the checkpoint's chat template.

        The system prompt is joined as LLaVA's conv_vicuna_v1 joins it (one space); the real
        llava-1.5-7b-hf template renders a system message the same way (tested), while the tiny
        checkpoints' templates may not, so it is not handed to the template.
        """
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        user_turn = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        system = SYSTEM_PROMPTS[system_prompt]
        return f"{system} {user_turn}" if system else user_turn

    def _build(self, template: PromptTemplate, question: str, label: str | None,
               vocabulary: Sequence[str] | None, background: str | None, system_prompt: str) -> AnswerPlan:
        chat_text = self.chat_text(question, system_prompt)
        plan = plan_answer(self.processor.tokenizer, template, chat_text, label=label, vocabulary=vocabulary,
                           background=background)
        budget = len(plan.prompt_ids) + self.n_image_tokens + template.max_new_tokens + CONTEXT_MARGIN
        if budget > self.max_positions:
            raise InvalidRequest(
                f"prompt is {len(plan.prompt_ids)} tokens plus {self.n_image_tokens} image tokens, over the "
                f"model's {self.max_positions}-token context; shorten the vocabulary", code="prompt_too_long"
            )
        return plan


def special_tokens(tokenizer) -> tuple[str, ...]:
    """Every special or added token's text (`<image>`, `<s>`, `</s>`, `<unk>`, `<pad>`, ...), longest first."""
    tokens = set(tokenizer.all_special_tokens)
    tokens |= {str(getattr(added, "content", added)) for added in tokenizer.added_tokens_decoder.values()}
    return tuple(sorted((t for t in tokens if t), key=lambda t: (-len(t), t)))
