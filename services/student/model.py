"""The Interaction ViT (I-ViT, paper §4.1) on top of transformers' ViT.

Every ViT attention layer is swapped for `InteractionAttention`, a subclass that
keeps the original `q_proj/k_proj/v_proj/o_proj` (so `ViTModel` and
`ViTForImageClassification` weights load unchanged) and adds:

- interaction queries `P'_q = X W'_q` (`interaction_q_proj`), giving
  C_AGT = softmax(P'_q P_kᵀ/√d) beside the layer's own C_VFM = softmax(P_q P_kᵀ/√d);
- the gated control network [g1, g2] = sigmoid(FFN([C_AGT; C_VFM])), per head and query row;
- the fused attention C_F = g1·C_AGT + g2·C_VFM applied to the values, then the
  layer's own output projection.

The same class is the plain ViT baseline (mode "off") and the paper's Table 3
ablations; see `MODES`. Each layer hands the trainer the attention rows that the
alignment loss compares with C_VLM (`alignment_log_probs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ViTConfig, ViTForImageClassification
from transformers.models.vit.modeling_vit import ViTAttention

InteractionMode = Literal["off", "full", "no-constraint", "constraint-on-original", "no-gate"]
AlignRows = Literal["cls", "mean"]

# mode -> (has interaction queries, has the gate, which attention the alignment loss constrains)
MODES: dict[str, tuple[bool, bool, str | None]] = {
    "off": (False, False, None),  # the plain ViT baseline
    "full": (True, True, "agt"),  # I-ViT
    "no-constraint": (True, True, None),  # Table 3: extra queries, no alignment loss
    "constraint-on-original": (False, False, "vfm"),  # Table 3: align the layer's own queries
    "no-gate": (True, False, "agt"),  # Table 3: C_F = (C_AGT + C_VFM) / 2
}
ABLATION_MODES = {"none": "full", "no-constraint": "no-constraint",
                  "constraint-on-original": "constraint-on-original", "no-gate": "no-gate"}

# Geometries: (image_size, patch_size, hidden, layers, heads, mlp). vit-tiny is the CPU/test size.
MODEL_SIZES: dict[str, tuple[int, int, int, int, int, int]] = {
    "vit-tiny": (64, 8, 96, 4, 3, 384),
    "vit-s16": (224, 16, 384, 12, 6, 1536),
    "vit-b16": (224, 16, 768, 12, 12, 3072),
    "vit-l16": (224, 16, 1024, 24, 16, 4096),
}


@dataclass(frozen=True)
class InteractionSettings:
    mode: InteractionMode = "full"
    gate_hidden: int = 64  # width of the gate FFN: ~25k params per layer at S/16 (paper: 22M -> 24M in all)
    align_rows: AlignRows = "cls"  # which C_AGT rows meet C_VLM; see docs/method.md

    @classmethod
    def from_config(cls, config: ViTConfig) -> InteractionSettings:
        raw = getattr(config, "interaction", None) or {}
        return cls(**raw)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "gate_hidden": self.gate_hidden, "align_rows": self.align_rows}


class InteractionGate(nn.Module):
    """[g1, g2] = sigmoid(W2 · gelu(W1 · [C_AGT; C_VFM])), per head and query row.

    W1 is split into its C_AGT and C_VFM halves so the 2N-wide concatenation is never materialised.
    """

    def __init__(self, num_keys: int, hidden: int) -> None:
        super().__init__()
        self.from_agt = nn.Linear(num_keys, hidden)
        self.from_vfm = nn.Linear(num_keys, hidden, bias=False)
        self.out = nn.Linear(hidden, 2)

    def forward(self, agt: torch.Tensor, vfm: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(F.gelu(self.from_agt(agt) + self.from_vfm(vfm))))


class InteractionAttention(ViTAttention):
    def __init__(self, config: ViTConfig, settings: InteractionSettings) -> None:
        super().__init__(config)
        has_queries, has_gate, self.constrained = MODES[settings.mode]
        self.mode = settings.mode
        self.align_rows = settings.align_rows
        self.interaction_enabled = settings.mode != "off"
        inner = config.num_attention_heads * self.head_dim
        self.interaction_q_proj = nn.Linear(config.hidden_size, inner, bias=config.qkv_bias) if has_queries else None
        num_keys = (config.image_size // config.patch_size) ** 2 + 1
        self.gate = InteractionGate(num_keys, settings.gate_hidden) if has_gate else None
        self.num_keys = num_keys
        self.explicit = False  # True: the literal equations with explicit N×N matrices (the reference path)
        self.record_rows = False  # True: keep the CLS rows of C_AGT and C_VFM (head mean) for pictures
        self.recorded_rows: dict[str, torch.Tensor] = {}
        # Filled by each forward; read by the model right after (see IViTForImageClassification).
        self.alignment_log_probs: torch.Tensor | None = None
        self.gate_mean: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        self.alignment_log_probs = None
        self.gate_mean = None
        if self.record_rows:
            self._record_cls_rows(hidden_states, attention_mask)
        if not self.interaction_enabled:
            return super().forward(hidden_states, attention_mask, **kwargs)
        batch, tokens, _ = hidden_states.shape
        if tokens != self.num_keys:
            raise ValueError(f"I-ViT was built for {self.num_keys} tokens (image_size/patch_size), got {tokens}; "
                             "resize the images to the model's image_size")
        shape = (batch, tokens, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        agt_query = None
        if self.interaction_q_proj is not None:
            agt_query = self.interaction_q_proj(hidden_states).view(shape).transpose(1, 2)
        if self.explicit or self.align_rows != "cls":
            output = self._explicit(query, key, value, agt_query, attention_mask)
        else:
            output = self._fused(query, key, value, agt_query, attention_mask)
        return self.o_proj(output.transpose(1, 2).reshape(batch, tokens, -1)), None

    @torch.no_grad()
    def _record_cls_rows(self, hidden_states: torch.Tensor, mask) -> None:
        """Where the CLS token looks, over the patches, per image: C_VFM and (if present) C_AGT (paper Fig. 5)."""
        batch, tokens, _ = hidden_states.shape
        shape = (batch, tokens, -1, self.head_dim)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        self.recorded_rows = {"vfm": _cls_log_probs(query, key, self.scaling, mask).exp().mean(dim=1)}
        if self.interaction_q_proj is not None and self.interaction_enabled:
            agt_query = self.interaction_q_proj(hidden_states).view(shape).transpose(1, 2)
            self.recorded_rows["agt"] = _cls_log_probs(agt_query, key, self.scaling, mask).exp().mean(dim=1)

    def _fused(self, query, key, value, agt_query, mask) -> torch.Tensor:
        """C_F·V without building any N×N matrix here (whether SDPA's kernel avoids them is PyTorch's choice).

        The gate's first layer is linear in the attention rows, C_AGT·W_a + C_VFM·W_v, which is
        attention with W_a (resp. W_v) as extra value columns; and C_F·V = g1·(C_AGT·V) + g2·(C_VFM·V)
        since the gates are per row. So two fused SDPA calls give everything; only the CLS row's
        logits are computed apart, for the alignment loss. Equal to `_explicit` (tested). On CPU, SDPA with
        value width != query width runs its math kernel, so this is as fast as `_explicit` there, not faster.
        """
        dropout = self.attention_dropout if self.training else 0.0
        sdpa = F.scaled_dot_product_attention
        if agt_query is None:  # constraint on the original queries: plain attention
            self.alignment_log_probs = _cls_log_probs(query, key, self.scaling, mask)
            return sdpa(query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
        if self.constrained is not None:
            self.alignment_log_probs = _cls_log_probs(agt_query, key, self.scaling, mask)
        if self.gate is None:
            agt_out = sdpa(agt_query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
            vfm_out = sdpa(query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
            return 0.5 * (agt_out + vfm_out)
        d = value.shape[-1]
        extra_a = self.gate.from_agt.weight.t().to(value.dtype).expand(*value.shape[:2], -1, -1)
        extra_v = self.gate.from_vfm.weight.t().to(value.dtype).expand(*value.shape[:2], -1, -1)
        agt_out = sdpa(agt_query, key, torch.cat([value, extra_a], dim=-1), attn_mask=mask, dropout_p=dropout,
                       scale=self.scaling)
        vfm_out = sdpa(query, key, torch.cat([value, extra_v], dim=-1), attn_mask=mask, dropout_p=dropout,
                       scale=self.scaling)
        hidden = agt_out[..., d:] + vfm_out[..., d:] + self.gate.from_agt.bias
        gates = torch.sigmoid(self.gate.out(F.gelu(hidden)))  # (B, H, N, 2)
        self.gate_mean = gates.detach().float().mean(dim=(0, 1, 2))
        return gates[..., :1] * agt_out[..., :d] + gates[..., 1:] * vfm_out[..., :d]

    def _explicit(self, query, key, value, agt_query, mask) -> torch.Tensor:
        """The paper's equations as written: materialise C_VFM, C_AGT and C_F (reference; `mean` rows)."""
        key_t = key.transpose(2, 3)
        vfm_logits = torch.matmul(query, key_t) * self.scaling
        if mask is not None:
            vfm_logits = vfm_logits + mask
        vfm = vfm_logits.softmax(dim=-1)
        constrained_logits = vfm_logits
        if agt_query is not None:
            agt_logits = torch.matmul(agt_query, key_t) * self.scaling
            if mask is not None:
                agt_logits = agt_logits + mask
            agt = agt_logits.softmax(dim=-1)
            constrained_logits = agt_logits
            if self.gate is not None:
                gates = self.gate(agt, vfm)  # (B, H, N, 2)
                fused = gates[..., :1] * agt + gates[..., 1:] * vfm
                self.gate_mean = gates.detach().float().mean(dim=(0, 1, 2))
            else:
                fused = 0.5 * (agt + vfm)
        else:
            fused = vfm
        if self.constrained is not None:
            self.alignment_log_probs = _image_log_probs(constrained_logits, self.align_rows)
        if self.training and self.attention_dropout > 0:
            fused = F.dropout(fused, p=self.attention_dropout)
        return torch.matmul(fused, value)


def _cls_log_probs(query, key, scaling: float, mask) -> torch.Tensor:
    logits = torch.matmul(query[:, :, :1], key.transpose(2, 3)) * scaling  # (B, H, 1, N): the CLS row only
    if mask is not None:
        logits = logits + mask[..., :1, :]
    return _image_log_probs(logits, "cls")


def _image_log_probs(logits: torch.Tensor, rows: AlignRows) -> torch.Tensor:
    """Attention over the image patches only (the CLS column dropped, renormalised), as log-probabilities.

    `cls`: the CLS query row, the token the classifier reads (B, H, P). `mean`: the patch rows'
    distributions averaged, then logged.
    """
    patch_logits = logits[..., 1:].float()
    if rows == "cls" or patch_logits.shape[2] == 1:
        return patch_logits[:, :, 0].log_softmax(dim=-1)
    probs = patch_logits[:, :, 1:].softmax(dim=-1).mean(dim=2)
    return probs.clamp_min(1e-30).log()


@dataclass
class IViTOutput:
    logits: torch.Tensor
    alignment: list[torch.Tensor]  # per constrained layer: (B, H, P) log-probabilities over patches
    gates: list[torch.Tensor | None]  # per layer: mean [g1, g2] of this forward, or None


class IViTForImageClassification(ViTForImageClassification):
    """`ViTForImageClassification` whose attention layers are `InteractionAttention`."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(config)
        settings = InteractionSettings.from_config(config)
        config.interaction = settings.to_dict()
        for layer in self.vit.layers:
            original = layer.attention
            layer.attention = InteractionAttention(config, settings)
            # keep the original projections (already initialised) so post_init order does not matter
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                setattr(layer.attention, name, getattr(original, name))
        self.post_init()
        self.copy_queries_to_interaction_queries()

    @property
    def interaction_layers(self) -> list[InteractionAttention]:
        return [layer.attention for layer in self.vit.layers]

    @torch.no_grad()
    def copy_queries_to_interaction_queries(self) -> None:
        """Start P'_q at P_q: C_AGT begins as the layer's own attention instead of noise."""
        for attention in self.interaction_layers:
            if attention.interaction_q_proj is not None:
                attention.interaction_q_proj.weight.copy_(attention.q_proj.weight)
                if attention.interaction_q_proj.bias is not None:
                    attention.interaction_q_proj.bias.copy_(attention.q_proj.bias)

    def set_interaction(self, enabled: bool) -> None:
        """Switch the interaction path off (plain ViT attention) or back on, without touching weights."""
        mode = InteractionSettings.from_config(self.config).mode
        for attention in self.interaction_layers:
            attention.interaction_enabled = enabled and mode != "off"

    def forward_interactions(self, pixel_values: torch.Tensor) -> IViTOutput:
        logits = self(pixel_values=pixel_values).logits
        layers = self.interaction_layers
        alignment = [a.alignment_log_probs for a in layers if a.alignment_log_probs is not None]
        return IViTOutput(logits=logits, alignment=alignment, gates=[a.gate_mean for a in layers])


def student_config(size: str, num_labels: int, mode: InteractionMode, **settings) -> ViTConfig:
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model {size!r}; choose one of {sorted(MODEL_SIZES)}")
    image, patch, hidden, layers, heads, mlp = MODEL_SIZES[size]
    config = ViTConfig(image_size=image, patch_size=patch, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=mlp, num_labels=num_labels,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.interaction = InteractionSettings(mode=mode, **settings).to_dict()
    return config


def build_student(size: str, num_labels: int, mode: InteractionMode, *, init: str = "scratch",
                  **settings) -> IViTForImageClassification:
    """From scratch at a named geometry, or from a pretrained ViT (hub id or folder) with a new head."""
    if init == "scratch":
        return IViTForImageClassification(student_config(size, num_labels, mode, **settings))
    config = ViTConfig.from_pretrained(init)
    config.num_labels = num_labels
    config.id2label = {i: str(i) for i in range(num_labels)}
    config.label2id = {str(i): i for i in range(num_labels)}
    config.interaction = InteractionSettings(mode=mode, **settings).to_dict()
    model = IViTForImageClassification.from_pretrained(init, config=config, ignore_mismatched_sizes=True)
    model.copy_queries_to_interaction_queries()
    return model


INTERACTION_PARAMS = ("interaction_q_proj", ".gate.")


def freeze_original(model: IViTForImageClassification) -> list[str]:
    """Freeze the pretrained ViT (paper §5.1.2): only interaction queries, gates and the head train.

    With the constraint on the original queries (no new parameters to constrain), the query
    projections train too, or the constraint could not move anything. Returns the trainable names.
    """
    mode = InteractionSettings.from_config(model.config).mode
    trainable = [*INTERACTION_PARAMS, "classifier."]
    if mode == "constraint-on-original":
        trainable.append(".q_proj.")
    names = []
    for name, param in model.named_parameters():
        param.requires_grad = any(part in name for part in trainable)
        if param.requires_grad:
            names.append(name)
    return names


def count_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    extra = sum(p.numel() for n, p in model.named_parameters() if any(part in n for part in INTERACTION_PARAMS))
    return {"total": total, "interaction": extra, "trainable": sum(p.numel() for p in model.parameters()
                                                                   if p.requires_grad)}


def count_flops(model: IViTForImageClassification) -> int:
    """Forward FLOPs of one image (matmuls, counted by torch's FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = model.config.image_size
    pixels = torch.zeros(1, model.config.num_channels, size, size)
    counter = FlopCounterMode(display=False)
    # The counter does not see inside the fused SDPA kernel of the plain path: count with eager attention.
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad(), counter:
            model(pixel_values=pixels)
    finally:
        model.set_attn_implementation(previous)
    return counter.get_total_flops()
