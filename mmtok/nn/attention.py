"""Attention layers shared by the generators: self-attention with a KV cache, and cross-attention.

Both run on ``F.scaled_dot_product_attention`` (fused kernels on CPU and GPU). Masks are boolean,
``True`` = may attend, broadcastable to ``B x heads x Lq x Lk``.

The cache is what makes entity-by-entity sampling linear in the number of entities: the keys and
values of finished (clean) entities are computed once and kept; every flow step of the entity being
generated then attends to ``cache + itself`` and only its own tokens go through the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys and values of the finished part of the sequence, one entry per attention layer.

    ``write`` mode (``cache.writing = True``): a forward pass appends its keys/values after
    attending to what was there (the block-causal step of a clean entity). Otherwise the cache is
    only read: the pass attends to ``cache + its own tokens`` and leaves the cache unchanged.
    """

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.writing = False

    def __len__(self) -> int:
        """Cached sequence length (0 when empty)."""
        return next(iter(self.keys.values())).shape[2] if self.keys else 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values to attend to for ``layer``: cached ones followed by ``k``/``v``; stores them
        when writing."""
        if layer in self.keys:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        if self.writing:
            self.keys[layer], self.values[layer] = k, v
        return k, v


class SelfAttention(nn.Module):
    """Multi-head self-attention (QKV with bias, as in xAR/DiT) with an optional KV cache."""

    def __init__(self, dim: int, heads: int, layer: int = 0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.layer = heads, layer
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """``x``: B x L x D. ``mask``: bool, broadcastable to B x H x L x (cached + L); None = full."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.extend(self.layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class CrossAttention(nn.Module):
    """Queries from the image tokens, keys/values from condition tokens (text), with a key-padding
    mask. The condition is fixed during sampling, so ``kv`` can be computed once (``project_kv``)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = context.shape
        kv = self.kv(context).view(B, T, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x``: B x L x D; ``context``: B x T x Dc (or its projected ``(k, v)``); ``key_mask``: B x T
        bool, True = a real token."""
        B, L, D = x.shape
        k, v = context if isinstance(context, tuple) else self.project_kv(context)
        q = self.q(x).view(B, L, self.heads, -1).transpose(1, 2)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))
