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


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, except for bf16 inference on CPU with many rows.

    There PyTorch's fused CPU kernel is slow for the short, many-headed attentions of our
    generators (head dim 48, one query per row when decoding: 2.7 ms against 0.5 ms for two batched
    matmuls at 128 rows x 4 heads x 1 x 64; ``benchmarks/bench_attention.py`` measures it), and its
    ``MATH`` backend upcasts to fp32, slower still. So: bf16 matmuls, softmax accumulated in fp32.
    Training (grad enabled), small batches and long query blocks (more than 16 queries: whole
    sequences, where the fused kernel wins) keep the fused kernel.
    """
    if (
        q.device.type != "cpu"
        or q.dtype != torch.bfloat16
        or torch.is_grad_enabled()
        or q.shape[0] * q.shape[1] < 64
        or q.shape[2] > 16
    ):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1, dtype=torch.float32).to(v.dtype) @ v


class KVCache:
    """Keys and values of the finished part of the sequence, one entry per attention layer.

    ``write`` mode (``cache.writing = True``): a forward pass appends its keys/values after
    attending to what was there (the block-causal step of a clean entity). Otherwise the cache is
    only read: the pass attends to ``cache + its own tokens`` and leaves the cache unchanged.

    Storage is one preallocated buffer per layer (grown by doubling, or sized once by ``capacity``):
    a pass writes its keys/values in place after the cached ones and attends to a view, instead of
    concatenating the whole cache again at every decoding step (quadratic copying; it was 14% of
    ELM's batch-64 decoding time). A read-only pass writes the same slots as scratch and does not
    advance the length, so the next pass overwrites them.
    """

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.lengths: dict[int, int] = {}
        self.writing = False

    def __len__(self) -> int:
        """Cached sequence length (0 when empty)."""
        return next(iter(self.lengths.values())) if self.lengths else 0

    def _room(self, layer: int, k: torch.Tensor, need: int) -> None:
        buf = self.keys.get(layer)
        if buf is not None and buf.shape[2] >= need and buf.shape[:2] == k.shape[:2] and buf.dtype == k.dtype:
            return
        n = self.lengths.get(layer, 0)
        size = max(need, self.capacity, 2 * buf.shape[2] if buf is not None else 0)
        for store in (self.keys, self.values):
            new = k.new_empty(*k.shape[:2], size, k.shape[3])
            if n:
                new[:, :, :n] = store[layer][:, :, :n]
            store[layer] = new

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values to attend to for ``layer``: cached ones followed by ``k``/``v``; stores them
        when writing."""
        n, L = self.lengths.get(layer, 0), k.shape[2]
        self._room(layer, k, n + L)
        self.keys[layer][:, :, n : n + L] = k
        self.values[layer][:, :, n : n + L] = v
        if self.writing:
            self.lengths[layer] = n + L
        return self.keys[layer][:, :, : n + L], self.values[layer][:, :, : n + L]

    def keep(self, start: int, index: torch.Tensor) -> None:
        """Keep the first ``start`` entries and then the entries ``start + index`` (in that order),
        dropping the rest: how speculative decoding keeps the accepted path of a verified tree."""
        for layer in self.lengths:
            for store in (self.keys, self.values):
                store[layer][:, :, start : start + len(index)] = store[layer][:, :, start + index]
            self.lengths[layer] = start + len(index)


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
        out = attention(q, k, v, mask)
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
        out = attention(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))
