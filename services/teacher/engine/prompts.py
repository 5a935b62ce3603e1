"""Versioned prompt templates (the paper's appendix §8) and their answer parsers.

A template fixes the question, how the answer starts when the label is forced,
and how the foreground / background words are found in the answer text. The
id and version go into every cache key: changing wording means a new version.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from shared.schemas import Task

# LLaVA-1.5's system prompt (LLaVA's conv_vicuna_v1, the conversation its weights were tuned on). HF's
# chat template renders a system message as its bare text, and LLaVA joins system and first turn with
# one space: "<system> USER: <image>\n<question> ASSISTANT:".
SYSTEM_PROMPTS = {
    "llava": "A chat between a curious human and an artificial intelligence assistant. "
             "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "none": "",
}


class AnswerStatus(StrEnum):
    ok = "ok"
    no_background = "no-background"  # foreground found, background missing: map from C_fore alone
    off_vocabulary = "off-vocabulary"  # foreground word not in the given vocabulary (free answer)
    malformed = "malformed"  # no foreground word found: the map is degenerate


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@dataclass(frozen=True)
class ParsedAnswer:
    status: AnswerStatus
    foreground: list[Span]
    background: list[Span]
    message: str = ""


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    version: int
    tasks: tuple[Task, ...]
    text: str
    # How the answer begins when the foreground is forced ("{label}" filled in) and
    # when the foreground is chosen from a vocabulary (the word goes between).
    forced_prefix: str | None = None
    choice_prefix: str | None = None
    choice_suffix: str | None = None
    # The whole answer, when the label (and the background, where "{background}" appears) are
    # given: nothing is generated, one forward computes the map.
    forced_answer: str | None = None
    # Characters that end the free part the model writes after the forced prefix.
    stop_chars: str = ""
    uses_vocabulary: bool = False
    max_new_tokens: int = 16

    @property
    def has_background(self) -> bool:
        return self.forced_answer is not None and "{background}" in self.forced_answer

    def question(self, *, vocabulary: Sequence[str] | None = None, target: str | None = None) -> str:
        text = self.text
        if target is not None:
            text = text.replace("{tgt_obj}", target)
        if self.uses_vocabulary and vocabulary:
            text = f"{text} {', '.join(vocabulary)}."
        return text


_FG_BG = (
    "If you are doing an image classification task, what is the foreground and what is the background? "
    "The answer format is as follows: {'foreground':{}, 'background':{}}. "
    "Please choose the foreground word from the list below:"
)
_DENSE = (
    "If you are doing an object detection task, please tell me if there is/are {tgt_obj} in this image. "
    "The answer format is as follows: Yes, there is/are {tgt_obj} in the image, "
    "and the background is {background}."
)

TEMPLATES: dict[str, PromptTemplate] = {
    t.id: t
    for t in (
        # Prompt 1 of the paper, its best (Table 8).
        PromptTemplate(
            id="fg-bg-vocab", version=1, tasks=(Task.classification,), text=_FG_BG,
            forced_prefix=" {{'foreground': '{label}', 'background': '",
            choice_prefix=" {'foreground': '", choice_suffix="', 'background': '",
            forced_answer=" {{'foreground': '{label}', 'background': '{background}'}}",
            stop_chars="'}\n", uses_vocabulary=True, max_new_tokens=12,
        ),
        # Prompt 2: the whole short answer is the foreground; there is no background term.
        PromptTemplate(
            id="single-word", version=2, tasks=(Task.classification,),
            text="If you are doing an image classification task, What is the object in the picture? "
            "Answer the question using a single word or phrase.",
            # v2: with the label given, the label is the whole answer (v1 let the model go on).
            forced_prefix=" {label}", forced_answer=" {label}", stop_chars="\n", max_new_tokens=6,
        ),
        # Prompt 3: every word of the description counts (the paper takes their mean).
        PromptTemplate(
            id="describe", version=1, tasks=(Task.classification,),
            text="Please describe the object in the picture in detail.", max_new_tokens=48,
        ),
        # The dense prompt; boxes are drawn on the image as the visual prompt.
        PromptTemplate(
            id="dense-visual", version=1, tasks=(Task.detection, Task.segmentation), text=_DENSE,
            forced_prefix=" Yes, there is/are {label} in the image, and the background is",
            forced_answer=" Yes, there is/are {label} in the image, and the background is {background}.",
            stop_chars=".\n", max_new_tokens=12,
        ),
    )
}

DEFAULT_TEMPLATE = {Task.classification: "fg-bg-vocab", Task.detection: "dense-visual",
                    Task.segmentation: "dense-visual"}

# A word: letters or digits, joined by hyphens or apostrophes ("t-shirt", "potter's").
_WORD = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*", re.UNICODE)
# Prompt 1's keys. The values are found by where they end (the quote before the next key, or the
# closing brace), not by what they may contain: a word with an apostrophe is one value.
_FG_KEY = re.compile(r"['\"]?foreground['\"]?\s*:\s*\{?\s*['\"]?", re.IGNORECASE)
_FG_END = re.compile(r"['\"]?\s*\}?\s*,\s*['\"]?background['\"]?\s*:", re.IGNORECASE)
_FG_END_ALONE = re.compile(r"['\"]?\s*[,}\n]|['\"]\s*$")
# Where a known word's value closes: its quote then a comma, brace or the end; or a brace; or the end.
_VALUE_CLOSED = re.compile(r"['\"]\s*(?:[,}]|$)|\s*\}|\s*$|\n")
_BG_VALUE = re.compile(r"\s*\{?\s*['\"]?(?P<back>.*?)(?:['\"]?\s*\}|['\"]\s*$|\n|$)", re.DOTALL)
_DENSE_RE = re.compile(
    r"there\s+(?:is/are|is|are)\s+(?P<fore>.+?)\s+in\s+the\s+image"
    r"(?:.*?background\s+is\s*(?P<back>[^.\n]*))?",
    re.IGNORECASE | re.DOTALL,
)


def _words(text: str, start: int, end: int) -> list[Span]:
    """Spans of the words in text[start:end]: punctuation and quotes are never selected."""
    return [Span(start + m.start(), start + m.end()) for m in _WORD.finditer(text[start:end])]


def _known_word_at(text: str, start: int, words: Sequence[str]) -> int | None:
    """End of the longest of `words` written at `start` (any case) and closed there, else None."""
    best = None
    for word in words:
        end = start + len(word)
        closed = _VALUE_CLOSED.match(text, end) is not None  # "potter" is not closed in "potter's"
        if closed and text[start:end].lower() == word.lower() and (best is None or end > best):
            best = end
    return best


def _fg_bg_spans(text: str, vocabulary: Sequence[str] | None) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Character spans of Prompt 1's foreground and background values; None without a foreground key."""
    key = _FG_KEY.search(text)
    if key is None:
        return None
    start = key.end()
    after = _FG_END.search(text, start)
    end = _known_word_at(text, start, vocabulary or ())
    if end is None:
        alone = _FG_END_ALONE.search(text, start)
        end = after.start() if after else (alone.start() if alone else len(text))
    if after is None or after.start() < end:
        return (start, end), (end, end)
    back = _BG_VALUE.match(text, after.end())
    return (start, end), back.span("back") if back else (after.end(), after.end())


def _parse_fg_bg(text: str, vocabulary: Sequence[str] | None) -> ParsedAnswer:
    spans = _fg_bg_spans(text, vocabulary)
    if spans is None:
        return ParsedAnswer(AnswerStatus.malformed, [], [],
                            f"answer does not follow {{'foreground': ..., 'background': ...}}: {text!r}")
    fore, back = _words(text, *spans[0]), _words(text, *spans[1])
    if not fore:
        return ParsedAnswer(AnswerStatus.malformed, [], back, f"empty foreground in {text!r}")
    word = text[slice(*spans[0])].strip().strip("'\"").strip().lower()
    if vocabulary and word not in {v.lower() for v in vocabulary}:
        return ParsedAnswer(AnswerStatus.off_vocabulary, fore, back, f"foreground {word!r} is not in the vocabulary")
    if not back:
        return ParsedAnswer(AnswerStatus.no_background, fore, [], "no background word in the answer")
    return ParsedAnswer(AnswerStatus.ok, fore, back)


def parse_answer(template: PromptTemplate, text: str, vocabulary: Sequence[str] | None = None) -> ParsedAnswer:
    """Find the foreground and background words in `text`; never raises.

    `vocabulary`: the words the foreground may be (the forced label alone, or the list it was chosen
    from); a listed word is taken whole, whatever quotes or commas it holds.
    """
    if template.id == "fg-bg-vocab":
        return _parse_fg_bg(text, vocabulary)
    if template.id == "dense-visual":
        match = _DENSE_RE.search(text)
        if match is None:
            return ParsedAnswer(AnswerStatus.malformed, [], [],
                                f"answer does not follow 'Yes, there is/are X in the image ...': {text!r}")
        fore = _words(text, *match.span("fore"))
        back = _words(text, *match.span("back")) if match.group("back") else []
        if not back:
            return ParsedAnswer(AnswerStatus.no_background, fore, [], "no background phrase in the answer")
        return ParsedAnswer(AnswerStatus.ok, fore, back)
    # single-word and describe: every word of the answer is foreground, no background term.
    fore = _words(text, 0, len(text))
    if not fore:
        return ParsedAnswer(AnswerStatus.malformed, [], [], f"answer has no words: {text!r}")
    return ParsedAnswer(AnswerStatus.ok, fore, [])
