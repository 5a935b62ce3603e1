"""The engine on llava-1.5-7b-hf's real tokenizer, processor and chat template (tiny random weights).

What a new user's requests meet: SentencePiece pieces, the real special tokens, 576 image tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.teacher.engine.answer import TokenTrie
from services.teacher.engine.extraction import ExtractionSettings, InteractionEngine, InteractionRequest
from services.teacher.engine.prompts import SYSTEM_PROMPTS, TEMPLATES, AnswerStatus
from shared.errors import InvalidRequest
from shared.schemas import Box
from tests.teacher.engine.test_capture import _captured_runs, _eager_reference

VICUNA_V1 = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the human's questions.")
# The paper's prompts (appendix §8), typed out here rather than read from the templates.
PROMPT_1 = ("If you are doing an image classification task, what is the foreground and what is the background? "
            "The answer format is as follows: {'foreground':{}, 'background':{}}. "
            "Please choose the foreground word from the list below: goldfish, potter's wheel, Egyptian cat.")
PROMPT_2 = ("If you are doing an image classification task, What is the object in the picture? "
            "Answer the question using a single word or phrase.")
PROMPT_3 = "Please describe the object in the picture in detail."
DENSE = ("If you are doing an object detection task, please tell me if there is/are traffic light in this image. "
         "The answer format is as follows: Yes, there is/are traffic light in the image, "
         "and the background is {background}.")


def _image(seed: int = 0, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_576_contiguous_image_columns_equal_to_the_processors(real_vocab_engine):
    engine = real_vocab_engine
    valid, _, _ = engine.validate(InteractionRequest(image=_image(), label="goldfish"))
    [(_, plan)] = engine.planner.sequences(valid, "llava")
    expanded = engine.encoder.expand(plan.prompt_ids)
    columns = [i for i, token in enumerate(expanded) if token == 32000]
    assert engine.n_image_tokens == 576 and len(columns) == 576
    assert columns == list(range(columns[0], columns[0] + 576))
    text = plan.question + TEMPLATES["fg-bg-vocab"].forced_prefix.format(label="goldfish")
    processed = engine.vlm.processor(images=[_image()], text=[text], return_tensors="pt")
    assert processed["input_ids"][0].tolist() == expanded


@pytest.mark.parametrize(
    ("prompt", "fields", "question"),
    [
        ("fg-bg-vocab", {"vocabulary": ["goldfish", "potter's wheel", "Egyptian cat"]}, PROMPT_1),
        ("single-word", {}, PROMPT_2),
        ("describe", {}, PROMPT_3),
    ],
)
def test_classification_prompts_are_the_papers_through_the_real_template(real_vocab_engine, prompt, fields,
                                                                         question):
    engine = real_vocab_engine
    valid, _, _ = engine.validate(InteractionRequest(image=_image(), prompt=prompt, **fields))
    [(_, plan)] = engine.planner.sequences(valid, "llava")
    assert plan.question == f"{VICUNA_V1} USER: <image>\n{question} ASSISTANT:"
    [(_, bare)] = engine.planner.sequences(valid, "none")
    assert bare.question == f"USER: <image>\n{question} ASSISTANT:"


def test_the_dense_prompt_is_the_papers_through_the_real_template(real_vocab_engine):
    engine = real_vocab_engine
    box = Box(xyxy=(10, 10, 100, 100), label="traffic light")
    valid, _, _ = engine.validate(InteractionRequest(image=_image(), task="detection", boxes=[box]))
    [(_, plan)] = engine.planner.sequences(valid, "llava")
    assert plan.question == f"{VICUNA_V1} USER: <image>\n{DENSE} ASSISTANT:"


def test_the_system_prompt_is_llava_15s_own_as_the_real_template_renders_it(real_vocab_engine):
    processor = real_vocab_engine.vlm.processor
    assert SYSTEM_PROMPTS["llava"] == VICUNA_V1
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT_3}]}
    system = {"role": "system", "content": [{"type": "text", "text": VICUNA_V1}]}
    rendered = processor.apply_chat_template([system, user], add_generation_prompt=True, tokenize=False)
    assert rendered == real_vocab_engine.planner.chat_text(PROMPT_3, "llava")
    # the engine's default is LLaVA-1.5's own; the tiny teacher trained without one says so
    assert real_vocab_engine.settings.system_prompt == "llava"


@pytest.mark.parametrize(
    ("label", "pieces"),
    [
        ("potter's wheel", ["pot", "ter", "'", "s", "wheel"]),  # multi-piece, apostrophe inside
        ("Egyptian cat", ["E", "gypt", "ian", "cat"]),  # a capital splits off
        ("2nd", ["2", "nd"]),  # digits are single pieces in Llama's vocabulary
        ("café", ["ca", "f", "é"]),  # non-ASCII
        ("jinrikisha", ["jin", "rik", "ish", "a"]),
    ],
)
def test_answer_word_rows_are_the_whole_words_sentencepiece_pieces(real_vocab_engine, label, pieces):
    result = real_vocab_engine.extract(InteractionRequest(image=_image(), label=label, background="children's room"))
    assert result.answer == f"{{'foreground': '{label}', 'background': 'children's room'}}"
    assert result.answer_status is AnswerStatus.ok
    # the word after the opening quote is its own pieces: the quote is never a foreground row
    assert result.foreground_tokens == pieces
    assert result.background_tokens == ["children", "'", "s", "room"]
    assert not result.degenerate and abs(float(result.map.sum()) - 1) < 1e-5


def test_labels_with_quotes_are_one_foreground_when_the_model_writes_the_background(real_vocab_engine):
    result = real_vocab_engine.extract(InteractionRequest(image=_image(1), label="potter's wheel"))
    assert result.answer.startswith("{'foreground': 'potter's wheel', 'background': '")
    assert result.foreground_tokens == ["pot", "ter", "'", "s", "wheel"]
    assert result.answer_status is not AnswerStatus.malformed
    quoted = real_vocab_engine.extract(InteractionRequest(image=_image(1), label='the "best" dog', background="sky"))
    # quotes between words are punctuation, as in any answer: every word of the label, no quote
    assert quoted.foreground_tokens == ["the", "best", "dog"] and quoted.answer_status is AnswerStatus.ok


def test_vocabulary_trie_holds_every_words_pieces_and_the_choice_is_one_of_them(real_vocab_engine):
    engine = real_vocab_engine
    words = ["pot", "potter's wheel", "Egyptian cat", "café", "2nd", "jinrikisha"]
    valid, _, _ = engine.validate(InteractionRequest(image=_image(), vocabulary=words))
    [(_, plan)] = engine.planner.sequences(valid, "llava")
    chosen = []
    for word in words:
        full = engine.tokenizer(plan.question + " {'foreground': '" + word + "', 'background': '").input_ids
        assert full[: len(plan.prompt_ids)] == plan.prompt_ids
        node, depth = plan.trie.walk(full[len(plan.prompt_ids):])
        assert node is None and depth == len(full) - len(plan.prompt_ids)  # the word completes a choice
        chosen.append(full[len(plan.prompt_ids):])
    assert plan.trie == TokenTrie.build(chosen)
    result = engine.extract(InteractionRequest(image=_image(2), vocabulary=words))
    assert result.answer_status in {AnswerStatus.ok, AnswerStatus.no_background}
    fore = result.answer.split("'foreground': '")[1].split("', 'background'")[0]
    assert fore in words
    assert "".join(result.foreground_tokens) == fore.replace(" ", "")


@pytest.mark.parametrize("token", ["<image>", "<s>", "</s>", "<unk>", "<pad>"])
@pytest.mark.parametrize("field", ["label", "vocabulary", "background", "box"])
def test_text_holding_a_special_token_is_refused_naming_it(real_vocab_engine, token, field):
    text = f"cat{token}dog"
    fields = {"label": {"label": text}, "vocabulary": {"vocabulary": ["cat", text]},
              "background": {"label": "cat", "background": text},
              "box": {"task": "detection", "boxes": [Box(xyxy=(1, 1, 50, 50), label=text)]}}[field]
    with pytest.raises(InvalidRequest) as caught:
        real_vocab_engine.validate(InteractionRequest(image=_image(), **fields))
    assert caught.value.code == "special_token" and token in caught.value.message


def test_a_bad_request_in_a_batch_is_named_before_any_compute(real_vocab_engine):
    good = InteractionRequest(image=_image(), label="cat", background="grass")
    with pytest.raises(InvalidRequest, match=r"request 1: label 'a<image>' holds '<image>'"):
        real_vocab_engine.extract_batch([good, InteractionRequest(image=_image(), label="a<image>")])


def test_capture_matches_eager_attentions_on_the_real_vocabulary(real_vocab_dir):
    settings = ExtractionSettings()
    engine = InteractionEngine.from_pretrained(str(real_vocab_dir), settings=settings, max_batch_size=8)
    requests = [InteractionRequest(image=_image(0), vocabulary=["potter's wheel", "café"]),
                InteractionRequest(image=_image(1, (200, 300)), label="Egyptian cat"),
                InteractionRequest(image=_image(2), label="2nd", background="children's room")]
    runs = _captured_runs(engine, requests)
    reference = _eager_reference(str(real_vocab_dir), engine, runs, settings)
    for run, (fore, back) in zip(runs, reference, strict=True):
        assert run.fore_rows, f"no foreground tokens selected in {run.answer!r}"
        np.testing.assert_allclose(run.fore, fore, atol=1e-5, rtol=0)
        if back is None:
            assert run.back is None
        else:
            np.testing.assert_allclose(run.back, back, atol=1e-5, rtol=0)
