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


@pytest.mark.parametrize("vocabulary", [["potter's wheel", "cat"], None])
def test_fg_bg_values_with_apostrophes_are_whole(vocabulary):
    text = "{'foreground': 'potter's wheel', 'background': 'children's room'}"
    parsed = parse_answer(TEMPLATES["fg-bg-vocab"], text, vocabulary)
    assert parsed.status is AnswerStatus.ok
    assert _words(text, parsed.foreground) == ["potter's", "wheel"]
    assert _words(text, parsed.background) == ["children's", "room"]


@pytest.mark.parametrize(
    ("text", "vocabulary", "status", "fore", "back"),
    [
        # a listed word is taken whole, commas and quotes included
        ("{'foreground': 'cat, dog', 'background': 'sky'}", ["cat, dog"], AnswerStatus.ok, ["cat", "dog"], ["sky"]),
        ("{'foreground': 'the \"best\" dog', 'background': 'sky'}", ['the "best" dog'], AnswerStatus.ok,
         ["the", "best", "dog"], ["sky"]),
        # the model's background cut at the stop character (an apostrophe) keeps its first word
        ("{'foreground': 'potter's wheel', 'background': 'children'", ["potter's wheel"], AnswerStatus.ok,
         ["potter's", "wheel"], ["children"]),
        ("{'foreground': 'potter's wheel', 'background': '", ["potter's wheel"], AnswerStatus.no_background,
         ["potter's", "wheel"], []),
        ("{'foreground': 'potter's wheel'}", None, AnswerStatus.no_background, ["potter's", "wheel"], []),
        ("{'foreground': 'potter's wheel', 'background': 'x'}", ["potter"], AnswerStatus.off_vocabulary,
         ["potter's", "wheel"], ["x"]),
    ],
)
def test_fg_bg_answers_holding_quotes_and_commas(text, vocabulary, status, fore, back):
    parsed = parse_answer(TEMPLATES["fg-bg-vocab"], text, vocabulary)
    assert parsed.status is status, parsed.message
    assert _words(text, parsed.foreground) == fore
    assert _words(text, parsed.background) == back


def test_system_prompts_and_settings():
    from services.teacher.engine.extraction_settings import ExtractionSettings, recommended_settings
    from services.teacher.tiny.resolve import SHIPPED_DIR
    from shared.errors import InvalidRequest

    assert ExtractionSettings().system_prompt == "llava" and ExtractionSettings().as_dict()["system_prompt"] == "llava"
    with pytest.raises(InvalidRequest, match="system_prompt"):
        ExtractionSettings(system_prompt="vicuna")
    # the shipped tiny teacher learned its answers without a system prompt, and says so
    assert recommended_settings(SHIPPED_DIR).system_prompt == "none"
