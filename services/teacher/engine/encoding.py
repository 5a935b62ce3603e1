"""Token ids and images -> the model's input tensors: image token expanded, sequences left-padded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from services.teacher.engine.loading import LoadedVLM


class BatchEncoder:
    """Encodes sequences for one loaded LLaVA; prompts carry the image token once, the model wants one per patch."""

    def __init__(self, vlm: LoadedVLM, n_image_tokens: int) -> None:
        self.vlm = vlm
        self.tokenizer = vlm.processor.tokenizer
        self.image_processor = vlm.processor.image_processor
        self.image_token_id = vlm.model.config.image_token_index
        self.n_image_tokens = n_image_tokens

    def expand(self, ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for token in ids:
            out.extend([token] * self.n_image_tokens if token == self.image_token_id else [token])
        return out

    def encode(self, sequences: Sequence[list[int]], images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Left padding, so every sequence's next token sits in the same (last) column for generation."""
        length = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (length - len(s)) + s for s in sequences])
        mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in sequences])
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        device = self.vlm.device
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device),
                "pixel_values": pixels.to(device, self.vlm.dtype)}
