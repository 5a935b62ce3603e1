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

_active_session: contextvars.ContextVar[CaptureSession | DecodeCaptureSession | None] = contextvars.ContextVar(
    "lfi_capture_session", default=None
)


@dataclass(frozen=True)
class CaptureTarget:
    """Which attention modules a session listens to, and how it reduces what it keeps.

    layers: text-layer indices to keep (None = all); heads: head indices (None = all), reduced by
    `head_reduce` (mean | max). Probabilities are kept on the image columns `cols` (B, N) only.
    """

    modules: frozenset[int]
    cols: torch.Tensor
    layers: frozenset[int] | None = None
    heads: Sequence[int] | None = None
    head_reduce: str = "mean"

    def wants(self, module: torch.nn.Module) -> bool:
        if id(module) not in self.modules:
            return False
        return self.layers is None or module.layer_idx in self.layers

    def probabilities(self, q_rows: torch.Tensor, key: torch.Tensor, additive_mask: torch.Tensor,
                      scaling: float) -> torch.Tensor:
        return row_probabilities(q_rows, key, additive_mask, self.cols.to(q_rows.device), scaling,
                                 self.heads, self.head_reduce)


@dataclass
class CaptureSession:
    """What one full forward pass should capture, and where it puts it.

    rows: (B, A) sequence positions of the answer tokens whose attention we want (padded with any
    valid position). Result: `captured[layer]` is (B, A, N) float32, the head-reduced attention
    probabilities of each answer row on the image tokens.
    """

    target: CaptureTarget
    rows: torch.Tensor
    captured: dict[int, torch.Tensor] = field(default_factory=dict)

    def wants(self, module: torch.nn.Module) -> bool:
        return self.target.wants(module)

    def record(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float) -> None:
        if query.shape[2] != key.shape[2]:
            return  # a decoding step with a cache: not the full-sequence pass we capture
        rows = self.rows.to(query.device)
        self.captured[module.layer_idx] = self.target.probabilities(
            _gather_rows(query, rows), key, _mask_rows(attention_mask, rows, key.shape[2], query.device), scaling)


@dataclass
class DecodeCaptureSession:
    """What the answer's decoding should capture while it writes the answer: no second pass over the sequence.

    During generation only the query rows are kept (no kernels in the decoding steps beyond the
    model's own): the prefill's last `prefill_rows` positions of the left-padded prompt (the forced
    part of every answer and the row that predicts the first new token), then each step's one row
    of the token fed back in; and, per layer, the latest key cache. Afterwards `rows(layer)`
    computes all of them against the keys at once: (B, prefill_rows + steps, N), positions
    `first_position` onwards. Each row sees the keys up to its own position (causal) that are not
    padding (`key_valid`: the prompt's attention mask; every generated position counts).
    """

    target: CaptureTarget
    prefill_rows: int
    prompt_mask: torch.Tensor  # (B, T) the prompt batch's attention mask: 0 on left padding
    first_position: int | None = None
    queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    scaling: float = 1.0
    _mask_cache: torch.Tensor | None = field(default=None, repr=False)

    def wants(self, module: torch.nn.Module) -> bool:
        return self.target.wants(module)

    def record(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float) -> None:
        q_len = query.shape[2]
        pieces = self.queries.setdefault(module.layer_idx, [])
        if not pieces:  # the prefill: the whole prompt at once
            if q_len != key.shape[2]:
                raise RuntimeError("decode capture needs the prompt in one prefill pass (no cache given)")
            n = min(self.prefill_rows, q_len)
            self.first_position = q_len - n
            pieces.append(query[:, :, q_len - n :].clone())  # a copy: the prompt's queries may go
        elif q_len == 1:
            pieces.append(query)  # (B, H, 1, d): kept as it is, no kernel in the decoding loop
        else:
            raise RuntimeError(f"decode capture expects one new token per step, got {q_len}")
        self.keys[module.layer_idx] = key  # the cache so far; the last one holds every key a row needs
        self.scaling = scaling

    def rows(self, layer: int) -> torch.Tensor:
        q_rows = torch.cat(self.queries[layer], dim=2)
        key = self.keys[layer]
        return self.target.probabilities(q_rows, key, self._mask(key, q_rows.shape[2]), self.scaling)

    def _mask(self, key: torch.Tensor, n_rows: int) -> torch.Tensor:
        """Additive (B, 1, R, K) mask, the same for every layer: built once per shape."""
        cached = self._mask_cache
        if cached is not None and cached.shape[-2:] == (n_rows, key.shape[2]):
            return cached
        batch, k_len, device = key.shape[0], key.shape[2], key.device
        positions = self.first_position + torch.arange(n_rows, device=device)
        prompt = self.prompt_mask.to(device).bool()
        key_valid = torch.ones(batch, k_len, dtype=torch.bool, device=device)
        key_valid[:, : prompt.shape[1]] = prompt
        allowed = (torch.arange(k_len, device=device)[None, :] <= positions[:, None])[None] & key_valid[:, None, :]
        self._mask_cache = _additive(allowed[:, None])
        return self._mask_cache


def row_probabilities(
    q_rows: torch.Tensor,
    key: torch.Tensor,
    additive_mask: torch.Tensor,
    cols: torch.Tensor,
    scaling: float,
    heads: Sequence[int] | None,
    head_reduce: str,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) of the query rows `q_rows` (B, H, A, d) against `key`
    (B, H_kv, K, d), kept on the key columns `cols` (B, N) and head-reduced: (B, A, N) float32."""
    batch, n_heads, n_rows, head_dim = q_rows.shape
    k_len = key.shape[2]
    # Scores in float32 whatever the model dtype: only A rows, so this is cheap.
    q_rows = q_rows.float()
    groups = n_heads // key.shape[1]
    if groups > 1:  # grouped-query attention: each KV head serves `groups` query heads
        q_rows = q_rows.reshape(batch, key.shape[1], groups * n_rows, head_dim)
    scores = torch.matmul(q_rows, key.float().transpose(-1, -2)) * scaling
    if groups > 1:
        scores = scores.view(batch, n_heads, n_rows, k_len)
    probs = torch.softmax(scores + additive_mask, dim=-1)
    probs = torch.gather(probs, 3, cols[:, None, None, :].expand(batch, n_heads, n_rows, cols.shape[1]))
    if heads is not None:
        probs = probs[:, list(heads)]
    return probs.amax(dim=1) if head_reduce == "max" else probs.mean(dim=1)


def _gather_rows(query: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """query (B, H, T, d) at the positions `rows` (B, A): (B, H, A, d)."""
    batch, n_heads, _, head_dim = query.shape
    return torch.gather(query, 2, rows[:, None, :, None].expand(batch, n_heads, rows.shape[1], head_dim))


def _mask_rows(attention_mask: torch.Tensor | None, rows: torch.Tensor, k_len: int,
               device: torch.device) -> torch.Tensor:
    """Additive mask (B, 1, A, K) for the rows of a full pass: causal plus whatever padding the model masks."""
    if attention_mask is None:  # SDPA skipped the mask: plain causal, no padding
        allowed = torch.arange(k_len, device=device)[None, None, :] <= rows[:, :, None]
        return _additive(allowed[:, None])
    m = attention_mask[..., :k_len]
    picked = torch.gather(m, 2, rows[:, None, :, None].expand(m.shape[0], m.shape[1], rows.shape[1], k_len))
    return _additive(picked) if picked.dtype == torch.bool else picked.float()


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), device=allowed.device)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), device=allowed.device))


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


def _target(model: torch.nn.Module, cols: torch.Tensor, layers: Sequence[int] | None,
            heads: Sequence[int] | None, head_reduce: str) -> CaptureTarget:
    if model.config.text_config._attn_implementation != CAPTURE_IMPLEMENTATION:
        raise RuntimeError(
            "the text model does not run the capture kernel; load it with "
            f"attn_implementation={CAPTURE_IMPLEMENTATION!r} (services.teacher.engine.loading does)"
        )
    return CaptureTarget(modules=frozenset(id(m) for m in text_attention_modules(model)), cols=cols,
                         layers=frozenset(layers) if layers is not None else None, heads=heads,
                         head_reduce=head_reduce)


@contextmanager
def _active(session: CaptureSession | DecodeCaptureSession) -> Iterator:
    token = _active_session.set(session)
    try:
        yield session
    finally:
        _active_session.reset(token)


def capturing(model: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor, *, layers: Sequence[int] | None = None,
              heads: Sequence[int] | None = None, head_reduce: str = "mean"):
    """Activate capture for the full forward passes of `model` inside the block."""
    return _active(CaptureSession(_target(model, cols, layers, heads, head_reduce), rows))


def decode_capturing(model: torch.nn.Module, cols: torch.Tensor, prefill_rows: int, prompt_mask: torch.Tensor, *,
                     layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
                     head_reduce: str = "mean"):
    """Activate decode capture for the answer decoding inside the block (decoding.TransformersAnswerer)."""
    target = _target(model, cols, layers, heads, head_reduce)
    return _active(DecodeCaptureSession(target, prefill_rows, prompt_mask))
