"""The detection student: transformers' Conditional DETR (or DETR) with interaction queries in the decoder.

I-DETR keeps the ecosystem's classes (`ConditionalDetrForObjectDetection`, `DetrForObjectDetection`) and
their weights untouched; each decoder cross-attention (object queries -> encoder memory) gains an
`InteractionParts` module beside its own projections, run by one attention function registered with
transformers' `AttentionInterface` (as the teacher captures its attention):

- interaction queries P'_q = P_q W'_q (W'_q a full linear map over the heads' query channels, starting as the
  identity, so C_AGT = C_VFM at step 0, as the I-ViT copies W_q),
  C_AGT = softmax(P'_q P_kᵀ·s + mask) beside the layer's own C_VFM;
- the gate [g1, g2] = sigmoid(W2·gelu(W1·[C_AGT V; C_VFM V])), per head and query: the I-ViT's gate reads the
  two attention rows through a per-key matrix, which cannot exist when the number of keys (the feature map)
  changes with the image; the values take that matrix's place;
- output g1·(C_AGT V) + g2·(C_VFM V), then the layer's own output projection.

Each cross-attention reports its constrained attention's log-probabilities (B, H, Q, K) to the per-call
`InteractionCollector` passed down as `interactions=` (transformers hands attention kwargs to every layer);
the trainer aligns the rows of the matched queries with their instance maps (docs/method.md). The plain
`detr` student is the same class with no parts added. Other attention calls run transformers' SDPA kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AttentionInterface,
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    PreTrainedConfig,
    ResNetConfig,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from services.student.model_config import MODES, InteractionMode, ModeName
from shared.student_names import DETECTOR_NAMES, DetectorName

ATTENTION_IMPLEMENTATION = "lfi_interaction"


@dataclass
class CrossAttentionReport:
    log_probs: torch.Tensor  # (B, H, Q, K): the constrained attention (C_AGT, or C_VFM for constraint-on-original)
    gates: torch.Tensor | None = None  # mean [g1, g2] of this forward


@dataclass
class InteractionCollector:
    """One forward's reports, one per decoder cross-attention in layer order; lives as long as the call."""

    layers: list[CrossAttentionReport] = field(default_factory=list)


class InteractionParts(nn.Module):
    """The new parameters of one cross-attention, and the attention they compute (see the module docstring)."""

    def __init__(self, mode: InteractionMode, heads: int, query_dim: int, value_dim: int, gate_hidden: int) -> None:
        super().__init__()
        self.mode = mode
        width = heads * query_dim
        self.interaction_q_proj = nn.Linear(width, width) if mode.has_queries else None
        self.gate = nn.Sequential(nn.Linear(2 * value_dim, gate_hidden), nn.GELU(), nn.Linear(gate_hidden, 2)) \
            if mode.has_queries and mode.has_gate else None
        self.reset_interaction()

    @torch.no_grad()
    def reset_interaction(self) -> None:
        """W'_q = identity (C_AGT starts as C_VFM); the gate's last layer at zero (g1 = g2 = 0.5)."""
        if self.interaction_q_proj is not None:
            self.interaction_q_proj.weight.copy_(torch.eye(self.interaction_q_proj.in_features))
            self.interaction_q_proj.bias.zero_()
        if self.gate is not None:
            self.gate[-1].weight.zero_()
            self.gate[-1].bias.zero_()

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                scaling: float, dropout: float) -> tuple[torch.Tensor, CrossAttentionReport | None]:
        """query (B, H, Q, D), key (B, H, K, D), value (B, H, K, Dv) -> output (B, Q, H, Dv) and the report."""
        log_vfm = _log_attention(query, key, mask, scaling)
        vfm_out = _attend(log_vfm, value, dropout)
        if self.interaction_q_proj is None:
            report = CrossAttentionReport(log_vfm) if self.mode.constrained == "vfm" else None
            return vfm_out.transpose(1, 2), report
        batch, heads, queries, dim = query.shape
        mixed = self.interaction_q_proj(query.transpose(1, 2).reshape(batch, queries, heads * dim))
        log_agt = _log_attention(mixed.view(batch, queries, heads, dim).transpose(1, 2), key, mask, scaling)
        agt_out = _attend(log_agt, value, dropout)
        if self.gate is not None:
            gates = torch.sigmoid(self.gate(torch.cat([agt_out, vfm_out], dim=-1)))  # (B, H, Q, 2)
            output = gates[..., :1] * agt_out + gates[..., 1:] * vfm_out
            mean_gates = gates.detach().mean(dim=(0, 1, 2))
        else:
            output, mean_gates = (agt_out + vfm_out) / 2, None
        constrained = {"agt": log_agt, "vfm": log_vfm}.get(self.mode.constrained or "agt")
        return output.transpose(1, 2), CrossAttentionReport(constrained, mean_gates)


def _log_attention(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scaling
    if mask is not None:
        # transformers hands SDPA a boolean mask (True: attend) or an additive float one
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    return torch.log_softmax(scores, dim=-1)


def _attend(log_probs: torch.Tensor, value: torch.Tensor, dropout: float) -> torch.Tensor:
    probs = log_probs.exp().to(value.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs, value)


def interaction_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                  attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                  scaling: float | None = None, interactions: InteractionCollector | None = None,
                                  **kwargs) -> tuple[torch.Tensor, None]:
    """SDPA for every attention without interaction parts; the I-DETR cross-attention for those with them."""
    parts: InteractionParts | None = getattr(module, "interaction", None)
    if parts is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    output, report = parts(query, key, value, attention_mask, scale, dropout if module.training else 0.0)
    if interactions is not None and report is not None:
        interactions.layers.append(report)
    return output, None


AttentionInterface.register(ATTENTION_IMPLEMENTATION, interaction_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


def cross_attentions(model: nn.Module) -> list[nn.Module]:
    """The decoder's cross-attention modules, in layer order (DETR and Conditional DETR name them alike)."""
    return [layer.encoder_attn for layer in model.model.decoder.layers]


def add_interaction(model: nn.Module, mode: ModeName, gate_hidden: int = 64) -> nn.Module:
    """Give each decoder cross-attention its interaction parts; the model's own weights are not touched."""
    config = model.config
    heads = config.decoder_attention_heads
    value_dim = config.d_model // heads
    # Conditional DETR concatenates content and spatial query channels: its query heads are twice as wide
    query_dim = value_dim * (2 if config.model_type == "conditional_detr" else 1)
    for attention in cross_attentions(model):
        attention.interaction = InteractionParts(MODES[mode], heads, query_dim, value_dim, gate_hidden)
    config.interaction = {"mode": mode, "gate_hidden": gate_hidden}
    return model


def interaction_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for attention in cross_attentions(model) if hasattr(attention, "interaction")
            for p in attention.interaction.parameters()]


def tiny_backbone() -> ResNetConfig:
    """A two-stage ResNet (stride 8: a 64 px image gives an 8x8 memory, the tiny teacher's grid). Two blocks per
    stage: with one block of 32/64 channels the detector found the boxes but not which shape was in them."""
    return ResNetConfig(embedding_size=32, hidden_sizes=[64, 128], depths=[2, 2], layer_type="basic",
                        out_features=["stage2"])


@dataclass(frozen=True)
class DetectorSize:
    """A detector geometry a job can name (`model` in the job spec, shared.student_names.DetectorName)."""

    conditional: bool  # Conditional DETR (fast to train from scratch, paper Table 7) or the original DETR
    d_model: int
    layers: int  # encoder and decoder layers each
    heads: int
    ffn: int
    queries: int
    tiny_backbone: bool  # the two-stage ResNet above, else ResNet-50 (as the paper's DETR-R50)


DETECTOR_SIZES: dict[DetectorName, DetectorSize] = {
    "cdetr-tiny": DetectorSize(True, 64, 2, 4, 128, 16, True),
    "detr-tiny": DetectorSize(False, 64, 2, 4, 128, 16, True),
    "cdetr-r50": DetectorSize(True, 256, 6, 8, 2048, 300, False),
    "detr-r50": DetectorSize(False, 256, 6, 8, 2048, 100, False),
}
if set(DETECTOR_SIZES) != set(DETECTOR_NAMES):
    raise ImportError(f"DETECTOR_SIZES {sorted(DETECTOR_SIZES)} differ from shared.student_names {DETECTOR_NAMES}")


def detector_config(name: DetectorName, num_labels: int) -> PreTrainedConfig:
    size = DETECTOR_SIZES[name]
    backbone = tiny_backbone() if size.tiny_backbone else ResNetConfig(out_features=["stage4"])
    config_class = ConditionalDetrConfig if size.conditional else DetrConfig
    return config_class(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                        d_model=size.d_model, encoder_layers=size.layers, decoder_layers=size.layers,
                        encoder_attention_heads=size.heads, decoder_attention_heads=size.heads,
                        encoder_ffn_dim=size.ffn, decoder_ffn_dim=size.ffn, num_queries=size.queries,
                        num_labels=num_labels, auxiliary_loss=True, dropout=0.0 if size.tiny_backbone else 0.1)


def build_detector(name: DetectorName, num_labels: int, mode: ModeName, *, init: str = "scratch",
                   gate_hidden: int = 64) -> nn.Module:
    """The student: from config (`init="scratch"`) or from a saved DETR / Conditional DETR folder or hub id, whose
    weights load unchanged (only a class head of another size is replaced); interaction parts unless mode is off."""
    conditional = DETECTOR_SIZES[name].conditional
    model_class = ConditionalDetrForObjectDetection if conditional else DetrForObjectDetection
    if init == "scratch":
        config = detector_config(name, num_labels)
        model = model_class._from_config(config, attn_implementation=ATTENTION_IMPLEMENTATION)
        # The stock encoder freezes the ResNet stem and first stage (pretrained ImageNet features); from random
        # weights those would stay random
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    else:
        model = model_class.from_pretrained(init, num_labels=num_labels, ignore_mismatched_sizes=True,
                                            attn_implementation=ATTENTION_IMPLEMENTATION)
    if mode != "off":
        add_interaction(model, mode, gate_hidden)
    return model


def _counting_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                                interactions: InteractionCollector | None = None,
                                **kwargs) -> tuple[torch.Tensor, None]:
    """Explicit matmuls everywhere: torch's FlopCounterMode does not see inside the fused SDPA kernel."""
    if getattr(module, "interaction", None) is not None:
        return interaction_attention_forward(module, query, key, value, attention_mask, dropout, scaling, interactions)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    output = torch.matmul(torch.exp(_log_attention(query, key, attention_mask, scale)).to(value.dtype), value)
    return output.transpose(1, 2), None


AttentionInterface.register(ATTENTION_IMPLEMENTATION + "_counting", _counting_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_IMPLEMENTATION + "_counting", sdpa_mask)


def count_detector_flops(model: nn.Module, size: int) -> int:
    """Forward FLOPs for one size x size image (2 per multiply-add), attention included."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    previous = model.config._attn_implementation
    model.config._attn_implementation = ATTENTION_IMPLEMENTATION + "_counting"
    try:
        with torch.no_grad(), counter:
            pixels, mask = torch.zeros(1, 3, size, size), torch.ones(1, size, size, dtype=torch.long)
            model.eval()(pixel_values=pixels, pixel_mask=mask)
    finally:
        model.config._attn_implementation = previous
    return counter.get_total_flops()
