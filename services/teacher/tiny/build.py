"""Offline LLaVA-1.5-architecture checkpoints built from configs.

No machine here can download weights, so the project builds its own: the same
classes (CLIP vision tower, projector, Llama text model), a tokenizer trained
locally with `tokenizers`, a CLIP image processor and LLaVA-1.5's chat
template, saved so that `LlavaForConditionalGeneration.from_pretrained` and
`AutoProcessor.from_pretrained` load them exactly like `llava-hf/llava-1.5-7b-hf`.
The `llava-1.5-7b-vocab` preset instead ships the real checkpoint's tokenizer,
processor and chat template (vendored in `assets/llava-1.5-7b-hf/`, no weights)
beside tiny random weights of the real vocabulary and token geometry.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

# LLaVA-1.5's conversation format, as shipped with llava-hf/llava-1.5-7b-hf.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'user' %}{{ ' ' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# llava-hf/llava-1.5-7b-hf's tokenizer, processor, chat template and configs (no weights), with its
# license and provenance: the real text side, for tests and for presets that name it.
VENDORED_DIR = Path(__file__).with_name("assets")
# Files of a vendored folder a built checkpoint takes verbatim; config.json and generation_config.json
# describe the real 7B weights, so the builder writes its own.
_TEXT_SIDE_FILES = ("added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json",
                    "processor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                    "tokenizer_config.json", "README.md", "PROVENANCE.md", "LICENSE.md")


@dataclass(frozen=True)
class TinyPreset:
    """Shapes of a checkpoint. Image geometry follows LLaVA-1.5 unless a preset says otherwise."""

    image_size: int = 336
    patch_size: int = 14
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 4
    # head_dim 32: vLLM's CPU attention kernels accept 32, 64, 80, ... but not 16.
    text_heads: int = 2
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vocab_size: int = 2048
    max_positions: int = 4096
    # A folder under assets/ whose real tokenizer, processor and chat template replace the trained ones.
    text_side: str | None = None

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, TinyPreset] = {
    # The bundled offline teacher: real LLaVA-1.5 token geometry (24x24 = 576 image
    # tokens), widths small enough that CPU tests run in milliseconds.
    "tiny": TinyPreset(),
    # The trained teacher's shapes (`lfi teacher train-tiny`): the 64 px synthetic images at their
    # own resolution, 8 px patches (an 8x8 token grid, the vit-tiny student's grid), so a CPU
    # trains it in minutes and each token sees a piece of texture it can name.
    "tiny-synth": TinyPreset(image_size=64, patch_size=8, vision_layers=3),
    # Same, with grouped-query attention in the text model (2 KV heads for 4 query heads).
    "tiny-gqa": TinyPreset(text_hidden=128, text_heads=4, text_kv_heads=2, text_intermediate=256),
    # LLaVA-1.5 geometry at a width a 2-core CPU can time in seconds (benchmarks).
    "cpu-bench": TinyPreset(
        vision_hidden=256, vision_layers=4, vision_heads=4,
        text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=8, text_intermediate=1376,
    ),
    # The real llava-1.5-7b shapes with random weights (about 14 GB in bf16): GPU benchmarks.
    "llava-1.5-7b-geometry": TinyPreset(
        vision_hidden=1024, vision_layers=24, vision_heads=16,
        text_hidden=4096, text_layers=32, text_heads=32, text_kv_heads=32, text_intermediate=11008,
        vocab_size=32064,
    ),
    # llava-1.5-7b-hf's own tokenizer (SentencePiece, 32000 + <image> 32000 + <pad> 32001, rows up to
    # 32064), processor (336 px, CLIP mean/std, 576 image tokens) and chat template, tiny random
    # weights: what a new user's requests meet, on a CPU in seconds.
    "llava-1.5-7b-vocab": TinyPreset(vocab_size=32064, text_side="llava-1.5-7b-hf"),
}

# Text the tokenizer learns its merges from: the prompt templates, answer formats
# and the words the synthetic data and common benchmarks use.
_CORPUS_WORDS = (
    "circle square triangle star cross ring diamond heart hexagon stripes dots grid checks noise "
    "waves plain gradient red green blue yellow orange purple white black gray brown pink cyan "
    "cat dog bird car truck boat plane horse sheep cow person chair table bottle cup tree flower "
    "grass sky water road sand snow wall floor room street field forest beach indoor outdoor "
    "foreground background object image picture photo classification detection segmentation "
    "yes no there is are in the a an and of on with what describe detail single word phrase"
)


def _corpus() -> list[str]:
    from services.teacher.engine.prompts import TEMPLATES

    lines = [t.text for t in TEMPLATES.values()]
    words = _CORPUS_WORDS.split()
    for i, word in enumerate(words):
        back = words[(i * 7 + 3) % len(words)]
        lines.append(f"USER: <image>\nWhat is this? ASSISTANT: {{'foreground': '{word}', 'background': '{back}'}}")
        lines.append(f"Yes, there is/are {word} in the image, and the background is {back}.")
    lines.append(" ".join(words))
    return lines


def train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any Unicode label encodes, nothing maps to <unk>)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 4096),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=4096,
    )


def llava_config(preset: TinyPreset, tokenizer_size: int, image_token_id: int, pad_id: int) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=preset.vision_hidden,
        intermediate_size=preset.vision_hidden * 4,
        num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads,
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        projection_dim=preset.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=preset.text_hidden,
        intermediate_size=preset.text_intermediate,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        num_key_value_heads=preset.text_kv_heads,
        vocab_size=max(preset.vocab_size, tokenizer_size),
        max_position_embeddings=preset.max_positions,
        pad_token_id=pad_id,
        bos_token_id=1,
        eos_token_id=2,
        rms_norm_eps=1e-5,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        pad_token_id=pad_id,
    )


def build_processor(tokenizer: PreTrainedTokenizerFast, preset: TinyPreset) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": preset.image_size},
        crop_size={"height": preset.image_size, "width": preset.image_size},
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
        resample=3,
    )
    # With the "default" strategy the CLS feature is dropped; +1 here keeps the
    # number of <image> tokens equal to the number of patch features.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=preset.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def vendored_processor(preset: TinyPreset) -> LlavaProcessor:
    """The vendored checkpoint's processor, checked against the preset's token geometry."""
    processor = AutoProcessor.from_pretrained(VENDORED_DIR / str(preset.text_side))
    # The "default" feature strategy drops CLIP's CLS feature: one extra position per image must
    # be counted by the processor, or it writes 575 image tokens for 576 features.
    if (processor.patch_size, processor.num_additional_image_tokens,
            processor.vision_feature_select_strategy) != (preset.patch_size, 1, "default"):
        raise ValueError(f"{preset.text_side}: processor geometry does not match the preset's patch size "
                         f"{preset.patch_size} with one additional image token and the default strategy")
    if processor.image_processor.crop_size["height"] != preset.image_size:
        raise ValueError(f"{preset.text_side}: processor crops to {processor.image_processor.crop_size}, "
                         f"the preset's images are {preset.image_size} px")
    return processor


def build_tiny_model(
    preset_name: str = "tiny",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build the model and processor in memory (straight onto `device` for the 7B geometry)."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    processor = vendored_processor(preset) if preset.text_side else build_processor(
        train_tokenizer(preset.vocab_size), preset)
    tokenizer = processor.tokenizer
    config = llava_config(
        preset, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, processor


def build_tiny_checkpoint(
    out_dir: str | Path,
    preset_name: str = "tiny",
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a loadable checkpoint folder; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_model(preset_name, seed=seed, device=device, dtype=dtype)
    model.save_pretrained(out)
    preset = PRESETS[preset_name]
    if preset.text_side:  # the real files, byte for byte, not a re-serialisation of them
        for name in _TEXT_SIDE_FILES:
            shutil.copyfile(VENDORED_DIR / preset.text_side / name, out / name)
    else:
        processor.save_pretrained(out)
    (out / "lfi_build.json").write_text(
        json.dumps({"builder": "lfi teacher build-tiny", "preset": preset_name, "seed": seed,
                    "shapes": asdict(PRESETS[preset_name])}, indent=2)
    )
    return out
