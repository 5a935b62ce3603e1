import pytest

from services.teacher.engine.answer import TokenTrie, token_offsets
from services.teacher.engine.prompts import TEMPLATES, AnswerStatus, parse_answer


def _words(text, spans):
    return [text[s.start : s.end] for s in spans]


@pytest.mark.parametrize(
    ("text", "status", "fore", "back"),
    [
        ("{'foreground': 'cat', 'background': 'grass'}", AnswerStatus.ok, ["cat"], ["grass"]),
        ("{'foreground':{golden retriever}, 'background':{green lawn}}", AnswerStatus.ok,
         ["golden", "retriever"], ["green", "lawn"]),
        ("{'foreground': 'cat', 'background': '", AnswerStatus.no_background, ["cat"], []),
        ("{'foreground': 'zebra', 'background': 'sky'}", AnswerStatus.off_vocabulary, ["zebra"], ["sky"]),
        ("I think it is a cat.", AnswerStatus.malformed, [], []),
        ("", AnswerStatus.malformed, [], []),
    ],
)
def test_fg_bg_answers(text, status, fore, back):
    parsed = parse_answer(TEMPLATES["fg-bg-vocab"], text, ["cat", "dog", "golden retriever"])
    assert parsed.status is status
    assert _words(text, parsed.foreground) == fore
    assert _words(text, parsed.background) == back


def test_dense_answer_selects_object_and_background_words_only():
    text = "Yes, there is/are red car in the image, and the background is a city street."
    parsed = parse_answer(TEMPLATES["dense-visual"], text)
    assert parsed.status is AnswerStatus.ok
    assert _words(text, parsed.foreground) == ["red", "car"]
    assert _words(text, parsed.background) == ["a", "city", "street"]


def test_describe_takes_every_word_and_no_punctuation():
    text = "A round, red ball!"
    parsed = parse_answer(TEMPLATES["describe"], text)
    assert _words(text, parsed.foreground) == ["A", "round", "red", "ball"]
    assert parsed.background == []


def test_trie_walk():
    trie = TokenTrie.build([[1, 2, 3], [1, 4]])
    node, depth = trie.walk([1])
    assert sorted(node.children) == [2, 4] and depth == 1
    assert trie.walk([1, 4]) == (None, 2)
    assert trie.walk([1, 4, 9, 9]) == (None, 2)


def test_token_offsets_cover_the_decoded_text(engine):
    ids = engine.tokenizer(" {'foreground': 'circle', 'background': 'stripes'}", add_special_tokens=False).input_ids
    text, offsets = token_offsets(engine.tokenizer, ids)
    assert "".join(text[s:e] for s, e in offsets) == text
