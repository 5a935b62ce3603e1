"""The teacher service on llava-1.5-7b-hf's real tokenizer: request text never reaches a 5xx.

A real redis-server, a real `lfi teacher serve` process, HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.keys import map_key, pixel_digest
from tests.support.processes import TEAM_KEYS

pytestmark = pytest.mark.slow

VICUNA_V1 = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the human's questions.")
SPECIAL = ["<image>", "<s>", "</s>", "<unk>", "<pad>"]
# Text a user may well send: quotes, braces, format markers, control and combining characters,
# other scripts, emoji, the answer format itself, pieces of special tokens.
ODD_TEXT = ["potter's wheel", "''", '"', "}", "{", "{label}", "%s", "\\", "a\nb", "\t", "\x00", "🐱 cat", "قطة",
            "ＡＢＣ", "e\u0301", "a\u200db", "▁", "<s", "s>", "cat', 'background': 'dog", "'" * 64]


def _image_b64(seed: int, size=(48, 40)) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _auth(team: str = "alpha") -> dict:
    return {"Authorization": f"Bearer {TEAM_KEYS[team]}"}


@pytest.fixture
def server(teacher, real_vocab_dir):
    # a long batching window: requests sent together share a batch
    return teacher(extra_args=["--model", str(real_vocab_dir), "--max-wait-ms", "300"])


def test_special_tokens_are_422_naming_them_and_a_good_request_beside_them_is_served(server):
    bad = [{"image": _image_b64(1), "label": f"cat{token}"} for token in SPECIAL]
    bad += [{"image": _image_b64(1), "vocabulary": ["cat", "<image>"]},
            {"image": _image_b64(1), "label": "cat", "background": "</s>"},
            {"image": _image_b64(1), "task": "detection", "boxes": [{"xyxy": [1, 1, 20, 20], "label": "<pad>"}]}]
    good = {"image": _image_b64(2), "label": "potter's wheel", "grid": [4, 4]}

    async def together():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                client.post(server.url + "/interactions", json=good, headers=_auth("alpha")),
                *(client.post(server.url + "/interactions", json=body, headers=_auth("beta")) for body in bad))

    served, *refused = asyncio.run(together())
    assert served.status_code == 200, served.text
    assert served.json()["foreground_tokens"] == ["pot", "ter", "'", "s", "wheel"]
    for body, response in zip(bad, refused, strict=True):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        text = str([body.get(field) for field in ("label", "vocabulary", "background", "boxes")])
        assert error["code"] == "special_token"
        assert any(token in error["message"] and token in text for token in SPECIAL), error


def test_odd_text_never_gets_a_5xx_and_bad_items_do_not_fail_their_batch(server):
    items = [{"image": _image_b64(3), "label": text, "background": "sky"} for text in ODD_TEXT]
    items += [{"image": _image_b64(4), "vocabulary": ["cat", text]} for text in ODD_TEXT[:8]]
    items += [{"image": _image_b64(5), "label": "cat", "background": text} for text in ODD_TEXT[:8]]
    items.insert(3, {"image": _image_b64(6), "label": "a<image>b"})
    response = httpx.post(server.url + "/interactions/batch", json={"items": items}, headers=_auth(), timeout=600)
    assert response.status_code == 200, response.text
    answers = response.json()["items"]
    # refused: the special token, and the label that is only whitespace (empty once stripped)
    refused = {i for i, item in enumerate(items) if i == 3 or item.get("label", "x").strip() == ""}
    assert len(refused) == 2
    for i, (item, answer) in enumerate(zip(items, answers, strict=True)):
        if i in refused:
            assert answer["error"]["code"] in {"special_token", "invalid_request"}, (item, answer)
        else:  # served, however odd the words: a map, the question asked, a status
            assert "error" not in answer, (item, answer)
            assert answer["question"].startswith(VICUNA_V1) and answer["map"]["shape"]
            assert answer["answer_status"] in {"ok", "no-background", "off-vocabulary", "malformed"}
    assert answers[0]["foreground_tokens"] == ["pot", "ter", "'", "s", "wheel"]


def test_the_question_and_the_system_prompt_option_are_in_the_response_and_the_key(server):
    info = httpx.get(server.url + "/info", headers=_auth(), timeout=10).json()
    assert info["extraction"]["system_prompt"] == "llava"
    body = {"image": _image_b64(7), "label": "goldfish", "background": "water", "grid": [4, 4]}
    default = httpx.post(server.url + "/interactions", json=body, headers=_auth(), timeout=120).json()
    llava = httpx.post(server.url + "/interactions", json={**body, "system_prompt": "llava"}, headers=_auth(),
                       timeout=120).json()
    none = httpx.post(server.url + "/interactions", json={**body, "system_prompt": "none"}, headers=_auth(),
                      timeout=120).json()
    assert default["question"].startswith(f"{VICUNA_V1} USER: <image>\nIf you are doing an image classification")
    assert default["question"].endswith("Please choose the foreground word from the list below: ASSISTANT:")
    assert llava["key"] == default["key"] and llava["cached"] is True  # naming the default is the default
    assert none["key"] != default["key"] and none["question"] == default["question"][len(VICUNA_V1) + 1:]
    # a client computes the default request's key from /info alone
    pixels = pixel_digest(Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB"))
    key = map_key(pixels=pixels, task="classification", label="goldfish", vocabulary=None, boxes=[],
                  prompt="fg-bg-vocab", prompt_version=info["prompts"]["fg-bg-vocab"], grid=[4, 4],
                  per_instance=False, return_layers=False, extraction=info["extraction"],
                  model_id=info["model"]["id"], model_revision=info["model"]["revision"], background="water")
    assert key == default["key"]
    unknown = httpx.post(server.url + "/interactions", json={**body, "system_prompt": "vicuna"}, headers=_auth(),
                         timeout=30)
    assert unknown.status_code == 422 and "system_prompt" in unknown.text
