"""A small nanoGPT-like causal transformer over bytes, in one file.

Attention can take a hook that turns the masked scores into attention weights:

    scores = q k^T / sqrt(d_head) + mask     # (B, H, T, T); mask = 0 for j <= i, MASK_VALUE (-1e9) for j > i
    w      = hook(scores, layer)              # default (hook None): softmax(scores), via the fused SDPA kernel
    y      = w v

The sparse-attention task passes a hook that multiplies the attention probabilities by per-edge gates. Without a
hook the dense path is ``F.scaled_dot_product_attention(is_causal=True)``: no (B, H, T, T) tensor is built.
The mask is a large finite negative number rather than -inf: softmax is the same (exp underflows to exactly 0)
and log-probabilities stay finite, so no 0 * inf = NaN can reach a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttnHook = Callable[[Tensor, int], Tensor]  # (scores (B, H, T, T), layer index) -> weights (B, H, T, T)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, layer: int):
        super().__init__()
        self.n_head, self.layer = n_head, layer
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, hook: AttnHook | None = None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if hook is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            H, hd = self.n_head, C // self.n_head
            scores = torch.baddbmm(additive_mask(T, x.device), q.reshape(B * H, T, hd),
                                   k.reshape(B * H, T, hd).transpose(1, 2), alpha=1.0 / math.sqrt(hd))
            y = hook(scores.view(B, H, T, T), self.layer) @ v  # (B, H, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, layer)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: Tensor, hook: AttnHook | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), hook)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + position embeddings, ``n_layer`` pre-norm blocks, a final LayerNorm, a tied output head."""

    def __init__(self, vocab: int, n_layer: int, d_model: int, n_head: int, context: int):
        super().__init__()
        self.context, self.n_layer, self.n_head = context, n_layer, n_head
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head, i) for i in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: Tensor, hook: AttnHook | None = None) -> Tensor:
        """``idx`` (B, T) int64 -> logits (B, T, vocab)."""
        B, T = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x, hook)
        return self.head(self.ln_f(x))


def build_model(cfg) -> GPT:
    """The GPT of a ``ModelConfig`` over bytes."""
    from trainables.data import VOCAB_SIZE

    return GPT(VOCAB_SIZE, cfg.n_layer, cfg.d_model, cfg.n_head, cfg.context)


MASK_VALUE = -1e9
_MASKS: dict[tuple, Tensor] = {}


def additive_mask(T: int, device: torch.device | str) -> Tensor:
    """(T, T) float: 0 where j <= i, ``MASK_VALUE`` where j > i; cached per device."""
    key = (T, str(device), "add")
    if key not in _MASKS:
        _MASKS[key] = torch.zeros(T, T, device=device).masked_fill_(~causal_mask(T, device), MASK_VALUE)
    return _MASKS[key]


def causal_mask(T: int, device: torch.device | str, *, strict: bool = False) -> Tensor:
    """(T, T) bool: ``j <= i`` (or ``j < i`` when ``strict``: the switchable edges), cached per device."""
    key = (T, str(device), strict)
    if key not in _MASKS:
        _MASKS[key] = torch.ones(T, T, dtype=torch.bool, device=device).tril(-1 if strict else 0)
    return _MASKS[key]


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean next-byte CE in nats/token; computed in float32 even under autocast."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
