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
ablations; see `MODES` in model_config.py. Each layer reports what the trainer needs (the
attention rows the alignment loss compares with C_VLM, the mean gates) as a `LayerInteraction`,
added to the per-call `InteractionCollector` that `forward_interactions` passes down through the
ViT's layers (the way transformers passes attention kwargs). Nothing is parked on the modules, so
a model can run several forwards at once (threads, torch.compile, DDP).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ViTConfig, ViTForImageClassification
from transformers.models.vit.modeling_vit import ViTAttention

from services.student.model_config import MODES, AlignRows, InteractionSettings, ModeName, student_config
from shared.student_names import ModelName


@dataclass
class LayerInteraction:
    """What one InteractionAttention reports from one forward, besides its output."""

    alignment: torch.Tensor | None = None  # (B, H, P) log-probabilities over patches of the constrained attention
    gates: torch.Tensor | None = None  # mean [g1, g2] of this forward; None without a gate
    cls_rows: dict[str, torch.Tensor] = field(default_factory=dict)  # "vfm"/"agt": CLS row, head mean (pictures)


@dataclass
class InteractionCollector:
    """One forward's options and the reports of its layers, passed down to every layer as `interactions=`.

    It lives as long as one call: under threads, torch.compile or DDP no forward sees another's results.
    `ViTLayer` keeps only the hidden states of its attention, so each layer adds its report here.
    """

    explicit: bool = False  # the literal equations with explicit N×N matrices (the reference path)
    cls_rows: bool = False  # also report the CLS rows of C_VFM and C_AGT (paper Fig. 5)
    layers: list[LayerInteraction] = field(default_factory=list)


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
        mode = MODES[settings.mode]
        self.constrained = mode.constrained
        self.align_rows = settings.align_rows
        self.interaction_enabled = settings.mode != "off"
        inner = config.num_attention_heads * self.head_dim
        self.interaction_q_proj = (nn.Linear(config.hidden_size, inner, bias=config.qkv_bias)
                                   if mode.has_queries else None)
        num_keys = (config.image_size // config.patch_size) ** 2 + 1
        self.gate = InteractionGate(num_keys, settings.gate_hidden) if mode.has_gate else None
        self.num_keys = num_keys

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                interactions: InteractionCollector | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output, attention weights) as `ViTAttention` returns them; this layer's report goes to `interactions`."""
        call = interactions or InteractionCollector()
        report = LayerInteraction()
        if call.cls_rows:
            report.cls_rows = self._cls_rows(hidden_states, attention_mask)
        if self.interaction_enabled:
            output, report.alignment, report.gates = self._interact(hidden_states, attention_mask, call.explicit)
            result = output, None
        else:
            result = super().forward(hidden_states, attention_mask, **kwargs)
        if interactions is not None:
            interactions.layers.append(report)
        return result

    def _heads(self, projection: nn.Linear, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        return projection(hidden_states).view(batch, tokens, -1, self.head_dim).transpose(1, 2)

    def _interact(self, hidden_states: torch.Tensor, mask: torch.Tensor | None,
                  explicit: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The layer's output, the constrained attention's log-probabilities and the mean gates."""
        batch, tokens, _ = hidden_states.shape
        if tokens != self.num_keys:
            raise ValueError(f"I-ViT was built for {self.num_keys} tokens (image_size/patch_size), got {tokens}; "
                             "resize the images to the model's image_size")
        query, key, value = (self._heads(p, hidden_states) for p in (self.q_proj, self.k_proj, self.v_proj))
        agt_query = None
        if self.interaction_q_proj is not None:
            agt_query = self._heads(self.interaction_q_proj, hidden_states)
        attend = self._explicit if explicit or self.align_rows != "cls" else self._fused
        output, alignment, gates = attend(query, key, value, agt_query, mask)
        return self.o_proj(output.transpose(1, 2).reshape(batch, tokens, -1)), alignment, gates

    @torch.no_grad()
    def _cls_rows(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Where the CLS token looks, over the patches, per image: C_VFM and (if present) C_AGT (paper Fig. 5)."""
        key = self._heads(self.k_proj, hidden_states)
        query = self._heads(self.q_proj, hidden_states)
        rows = {"vfm": _cls_log_probs(query, key, self.scaling, mask).exp().mean(dim=1)}
        if self.interaction_q_proj is not None and self.interaction_enabled:
            agt_query = self._heads(self.interaction_q_proj, hidden_states)
            rows["agt"] = _cls_log_probs(agt_query, key, self.scaling, mask).exp().mean(dim=1)
        return rows

    def _fused(self, query, key, value, agt_query, mask) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                  torch.Tensor | None]:
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
            alignment = _cls_log_probs(query, key, self.scaling, mask)
            return sdpa(query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scaling), alignment, None
        alignment = _cls_log_probs(agt_query, key, self.scaling, mask) if self.constrained is not None else None
        if self.gate is None:
            agt_out = sdpa(agt_query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
            vfm_out = sdpa(query, key, value, attn_mask=mask, dropout_p=dropout, scale=self.scaling)
            return 0.5 * (agt_out + vfm_out), alignment, None
        d = value.shape[-1]
        extra_a = self.gate.from_agt.weight.t().to(value.dtype).expand(*value.shape[:2], -1, -1)
        extra_v = self.gate.from_vfm.weight.t().to(value.dtype).expand(*value.shape[:2], -1, -1)
        agt_out = sdpa(agt_query, key, torch.cat([value, extra_a], dim=-1), attn_mask=mask, dropout_p=dropout,
                       scale=self.scaling)
        vfm_out = sdpa(query, key, torch.cat([value, extra_v], dim=-1), attn_mask=mask, dropout_p=dropout,
                       scale=self.scaling)
        hidden = agt_out[..., d:] + vfm_out[..., d:] + self.gate.from_agt.bias
        gates = torch.sigmoid(self.gate.out(F.gelu(hidden)))  # (B, H, N, 2)
        output = gates[..., :1] * agt_out[..., :d] + gates[..., 1:] * vfm_out[..., :d]
        return output, alignment, gates.detach().float().mean(dim=(0, 1, 2))

    def _explicit(self, query, key, value, agt_query, mask) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                     torch.Tensor | None]:
        """The paper's equations as written: materialise C_VFM, C_AGT and C_F (reference; `mean` rows)."""
        key_t = key.transpose(2, 3)
        vfm_logits = torch.matmul(query, key_t) * self.scaling
        if mask is not None:
            vfm_logits = vfm_logits + mask
        vfm = vfm_logits.softmax(dim=-1)
        constrained_logits, fused, gate_mean = vfm_logits, vfm, None
        if agt_query is not None:
            agt_logits = torch.matmul(agt_query, key_t) * self.scaling
            if mask is not None:
                agt_logits = agt_logits + mask
            agt = agt_logits.softmax(dim=-1)
            constrained_logits = agt_logits
            if self.gate is not None:
                gates = self.gate(agt, vfm)  # (B, H, N, 2)
                fused = gates[..., :1] * agt + gates[..., 1:] * vfm
                gate_mean = gates.detach().float().mean(dim=(0, 1, 2))
            else:
                fused = 0.5 * (agt + vfm)
        alignment = None
        if self.constrained is not None:
            alignment = _image_log_probs(constrained_logits, self.align_rows)
        if self.training and self.attention_dropout > 0:
            fused = F.dropout(fused, p=self.attention_dropout)
        return torch.matmul(fused, value), alignment, gate_mean


def _cls_log_probs(query, key, scaling: float, mask) -> torch.Tensor:
    logits = torch.matmul(query[:, :, :1], key.transpose(2, 3)) * scaling  # (B, H, 1, N): the CLS row only
    if mask is not None:
        logits = logits + mask[..., :1, :]
    return _image_log_probs(logits, "cls")


def _image_log_probs(logits: torch.Tensor, rows: AlignRows) -> torch.Tensor:
    """Attention over the image patches only (the CLS column dropped, renormalised), as log-probabilities.

    `cls`: the CLS query row, the token the classifier reads (B, H, P). `mean`: the patch rows'
    distributions averaged, then logged (B, H, P). `each`: every patch row, its heads averaged (B, R, P):
    the loss then meets each row with C_VLM (the trainer aligns them as it aligns `each` head), so every
    token gathers from where the teacher looks, not only the CLS token.
    """
    patch_logits = logits[..., 1:].float()
    if rows == "cls" or patch_logits.shape[2] == 1:
        return patch_logits[:, :, 0].log_softmax(dim=-1)
    if rows == "each":
        return patch_logits[:, :, 1:].softmax(dim=-1).mean(dim=1).clamp_min(1e-30).log()
    probs = patch_logits[:, :, 1:].softmax(dim=-1).mean(dim=2)
    return probs.clamp_min(1e-30).log()


@dataclass
class IViTOutput:
    logits: torch.Tensor
    alignment: list[torch.Tensor]  # per constrained layer: (B, H, P) log-probabilities over patches ((B, R, P): `each`)
    gates: list[torch.Tensor | None]  # per layer: mean [g1, g2] of this forward, or None
    cls_rows: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per layer, when asked: see _cls_rows


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

    def forward_interactions(self, pixel_values: torch.Tensor, *, explicit: bool = False,
                             cls_rows: bool = False) -> IViTOutput:
        """The logits and every layer's report from one forward (see `InteractionCollector` for the options)."""
        collector = InteractionCollector(explicit=explicit, cls_rows=cls_rows)
        logits = self(pixel_values=pixel_values, interactions=collector).logits
        reports = collector.layers
        return IViTOutput(logits=logits, alignment=[r.alignment for r in reports if r.alignment is not None],
                          gates=[r.gates for r in reports], cls_rows=[r.cls_rows for r in reports] if cls_rows else [])


def build_student(size: ModelName, num_labels: int, mode: ModeName, *, init: str = "scratch",
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
    mode = MODES[InteractionSettings.from_config(model.config).mode]
    trainable = [*INTERACTION_PARAMS, "classifier."]
    if mode.constrained == "vfm":
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
