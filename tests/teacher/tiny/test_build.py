"""The offline checkpoint loads through the real transformers classes, deterministically."""

from __future__ import annotations

import hashlib

from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from services.teacher.tiny.build import PRESETS, build_tiny_checkpoint
from services.teacher.tiny.resolve import resolve_model


def _digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_weights(tiny_dir, tmp_path):
    again = build_tiny_checkpoint(tmp_path / "again", "tiny", seed=0)
    other = build_tiny_checkpoint(tmp_path / "other", "tiny", seed=1)
    assert _digest(again) == _digest(tiny_dir)
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    assert _digest(other) != _digest(tiny_dir)


def test_loads_with_the_stock_classes_and_is_small(tiny_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    total = sum(f.stat().st_size for f in tiny_dir.iterdir())
    assert total < 10e6
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    assert text == "USER: <image>\nWhat is this? ASSISTANT:"
    inputs = processor(images=[Image.new("RGB", (500, 300))], text=[text], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == PRESETS["tiny"].image_tokens == 576
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def test_engine_prompt_ids_equal_the_processors(engine):
    """The engine tokenises text and expands <image> itself; the processor must agree."""
    from services.teacher.engine.prompts import TEMPLATES

    template = TEMPLATES["fg-bg-vocab"]
    plan = engine.planner.plan(template, "What is this?", "cat", None)
    chat = engine.vlm.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    text = chat + template.forced_prefix.format(label="cat")
    processed = engine.vlm.processor(images=[Image.new("RGB", (336, 336))], text=[text], return_tensors="pt")
    assert processed["input_ids"][0].tolist() == engine.encoder.expand(plan.prompt_ids)


def test_builtin_models_are_built_once_into_the_cache(tmp_path):
    first = resolve_model("builtin:tiny", tmp_path)
    stamp = (tmp_path / "tiny-llava-v1" / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("builtin:tiny", tmp_path) == first
    assert (tmp_path / "tiny-llava-v1" / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model("llava-hf/llava-1.5-7b-hf", tmp_path) == "llava-hf/llava-1.5-7b-hf"


def test_the_7b_geometry_preset_has_the_real_shapes():
    from services.teacher.tiny.build import llava_config

    preset = PRESETS["llava-1.5-7b-geometry"]
    config = llava_config(preset, 2048, 4, 3)
    assert preset.image_tokens == 576
    assert (config.text_config.num_hidden_layers, config.text_config.num_attention_heads,
            config.text_config.hidden_size) == (32, 32, 4096)
    assert (config.vision_config.num_hidden_layers, config.vision_config.hidden_size) == (24, 1024)
