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


# -- llava-1.5-7b-vocab: the real tokenizer, processor and chat template on tiny weights -------------

TOKENIZER_MODEL_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"  # PROVENANCE.md


def test_the_vocab_preset_ships_the_real_files_verbatim_with_their_license(real_vocab_dir):
    from services.teacher.tiny.build import VENDORED_DIR

    vendored = VENDORED_DIR / "llava-1.5-7b-hf"
    assert hashlib.sha256((vendored / "tokenizer.model").read_bytes()).hexdigest() == TOKENIZER_MODEL_SHA256
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                 "processor_config.json", "preprocessor_config.json", "LICENSE.md", "PROVENANCE.md", "README.md"):
        assert (real_vocab_dir / name).read_bytes() == (vendored / name).read_bytes(), name
    assert "LLAMA 2 Community License" in (vendored / "LICENSE.md").read_text()
    assert "license: llama2" in (vendored / "README.md").read_text()


def test_the_vocab_preset_loads_with_the_stock_classes_in_the_real_geometry(real_vocab_dir):
    model = LlavaForConditionalGeneration.from_pretrained(real_vocab_dir)
    processor = AutoProcessor.from_pretrained(real_vocab_dir)
    tokenizer = processor.tokenizer
    config = model.config
    assert (config.image_token_index, config.pad_token_id, config.text_config.vocab_size) == (32000, 32001, 32064)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
    assert model.get_input_embeddings().weight.shape == (32064, PRESETS["llava-1.5-7b-vocab"].text_hidden)
    assert (tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id, len(tokenizer)) == (32000, 32001, 32002)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    # the pitfall: with the "default" strategy the processor must count the CLS position it drops
    assert (processor.num_additional_image_tokens, processor.vision_feature_select_strategy) == (1, "default")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
        add_generation_prompt=True, tokenize=False,
    )
    assert text == "USER: <image>\nWhat is this? ASSISTANT:"
    inputs = processor(images=[Image.new("RGB", (320, 240))], text=[text], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    positions = (inputs["input_ids"][0] == 32000).nonzero().squeeze(1).tolist()
    assert len(positions) == 576 and positions == list(range(positions[0], positions[0] + 576))
    assert model(**inputs).logits.shape == (1, inputs["input_ids"].shape[1], 32064)
    total = sum(f.stat().st_size for f in real_vocab_dir.iterdir())
    assert total < 30e6  # 32064 x 64 embedding and head: tiny next to the 7B's 14 GB


def test_cli_builds_the_vocab_preset(real_vocab_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "vocab"
    proc = subprocess.run([sys.executable, "-m", "services.cli", "teacher", "build-tiny", str(out), "--preset",
                           "llava-1.5-7b-vocab"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _digest(out) == _digest(real_vocab_dir)  # same seed, same weights
    assert (out / "tokenizer.json").read_bytes() == (real_vocab_dir / "tokenizer.json").read_bytes()
