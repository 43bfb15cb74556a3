"""A small trainable text encoder over mmtok's shared CLIP BPE tokenizer (for the generators).

Prompts -> token ids (``TextTokenizer.clip``) -> a narrow embedding (the vocabulary has 49k entries,
so the table is kept small and projected up) + learned positions -> a pre-norm transformer encoder
with a key-padding mask -> per-token features and their masked mean. Generators cross-attend to the
tokens (binding words to places) and add the pooled vector to their adaLN condition.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


class TextEncoder(nn.Module):
    def __init__(self, dim: int, heads: int, length: int = 48, embed_dim: int = 64, layers: int = 2):
        super().__init__()
        from ..tokenizers.text import TextTokenizer

        self.length = length
        self.tokenizer = TextTokenizer.clip(context_length=length)
        self.embed = nn.Embedding(self.tokenizer.vocab_size, embed_dim)
        self.pos = nn.Parameter(torch.randn(length, embed_dim) * 0.02)
        self.proj = nn.Linear(embed_dim, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def count_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` with its start and end tokens (longer than ``length`` is truncated)."""
        return len(self.tokenizer.encode(prompt)) + 2

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (tokens B x T x D, mask B x T bool (True = real token), pooled B x D)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise InputError("text conditioning expects a list of prompt strings")
        tok = self.tokenizer(list(prompts))
        device = self.pos.device
        ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device).bool()
        h = self.proj(self.embed(ids) + self.pos[: ids.shape[1]])
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return h, mask, pooled
