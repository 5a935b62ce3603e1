"""Attention capture: the answer rows against the image columns, at every layer.

transformers returns attention weights only through the eager kernel with
`output_attentions=True`, which materialises every layer's T x T matrix. We
only need a few answer rows. This module registers an attention function,
"lfi_capture", that runs the normal SDPA kernel for the layer output and, while
a `CaptureSession` is active, recomputes softmax(q k^T) for just the requested
query rows from the post-rotary q and k it is handed: A x T scores per head
instead of T x T, and nothing kept but the image columns.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

CAPTURE_IMPLEMENTATION = "lfi_capture"

_active_session: contextvars.ContextVar[CaptureSession | None] = contextvars.ContextVar(
    "lfi_capture_session", default=None
)


@dataclass
class CaptureSession:
    """What one forward pass should capture, and where it puts it.

    rows:   (B, A) sequence positions of the answer tokens whose attention we want
            (padded with any valid position; `row_valid` says which are real).
    cols:   (B, N) sequence positions of the image tokens, in grid order.
    layers: text-layer indices to keep (None = all); heads: head indices (None = all).
    Result: `captured[layer]` is (B, A, N) float32, the head-reduced attention
    probabilities of each answer row on the image tokens.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    modules: frozenset[int]
    layers: frozenset[int] | None = None
    heads: Sequence[int] | None = None
    head_reduce: str = "mean"
    captured: dict[int, torch.Tensor] = field(default_factory=dict)

    def wants(self, module: torch.nn.Module) -> bool:
        if id(module) not in self.modules:
            return False
        return self.layers is None or module.layer_idx in self.layers

    def record(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
    ) -> None:
        batch, n_heads, seq_len, head_dim = query.shape
        if seq_len != key.shape[2]:
            return  # a decoding step with a cache: not the full-sequence pass we capture
        rows = self.rows.to(query.device)
        cols = self.cols.to(query.device)
        n_rows = rows.shape[1]
        # Scores in float32 whatever the model dtype: only A rows, so this is cheap.
        q_rows = torch.gather(query, 2, rows[:, None, :, None].expand(batch, n_heads, n_rows, head_dim)).float()
        groups = n_heads // key.shape[1]
        k = key.float()
        if groups > 1:
            q_rows = q_rows.view(batch, key.shape[1], groups * n_rows, head_dim)
        scores = torch.matmul(q_rows, k.transpose(-1, -2)) * scaling
        if groups > 1:
            scores = scores.view(batch, n_heads, n_rows, seq_len)
        scores = scores + self._mask_rows(attention_mask, rows, seq_len, scores.device)
        probs = torch.softmax(scores, dim=-1)
        probs = torch.gather(probs, 3, cols[:, None, None, :].expand(batch, n_heads, n_rows, cols.shape[1]))
        if self.heads is not None:
            probs = probs[:, list(self.heads)]
        reduced = probs.amax(dim=1) if self.head_reduce == "max" else probs.mean(dim=1)
        self.captured[module.layer_idx] = reduced

    @staticmethod
    def _mask_rows(
        attention_mask: torch.Tensor | None, rows: torch.Tensor, seq_len: int, device: torch.device
    ) -> torch.Tensor:
        """Additive mask (B, 1, A, T) for the selected rows: causal plus whatever padding the model masks."""
        if attention_mask is None:  # SDPA skipped the mask: plain causal, no padding
            allowed = torch.arange(seq_len, device=device)[None, None, :] <= rows[:, :, None]
            allowed = allowed[:, None]
        else:
            m = attention_mask[..., :seq_len]
            picked = torch.gather(m, 2, rows[:, None, :, None].expand(m.shape[0], m.shape[1], rows.shape[1], seq_len))
            if picked.dtype == torch.bool:
                allowed = picked
            else:
                return picked.float()
        zero = torch.zeros((), device=device)
        return torch.where(allowed, zero, torch.tensor(float("-inf"), device=device))


def capture_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA for the output; the answer-row probabilities on the side when a session is active."""
    session = _active_session.get()
    if session is not None and session.wants(module):
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        session.record(module, query, key, attention_mask, scale)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


AttentionInterface.register(CAPTURE_IMPLEMENTATION, capture_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE_IMPLEMENTATION, sdpa_mask)


def text_attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The language model's self-attention modules, in layer order."""
    layers = model.model.language_model.layers
    return [layer.self_attn for layer in layers]


@contextmanager
def capturing(
    model: torch.nn.Module,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    head_reduce: str = "mean",
) -> Iterator[CaptureSession]:
    """Activate capture for forward passes of `model` inside the block."""
    if model.config.text_config._attn_implementation != CAPTURE_IMPLEMENTATION:
        raise RuntimeError(
            "the text model does not run the capture kernel; load it with "
            f"attn_implementation={CAPTURE_IMPLEMENTATION!r} (services.teacher.engine.loading does)"
        )
    session = CaptureSession(
        rows=rows,
        cols=cols,
        modules=frozenset(id(m) for m in text_attention_modules(model)),
        layers=frozenset(layers) if layers is not None else None,
        heads=heads,
        head_reduce=head_reduce,
    )
    token = _active_session.set(session)
    try:
        yield session
    finally:
        _active_session.reset(token)
