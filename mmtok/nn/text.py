"""A small trainable text encoder over mmtok's shared CLIP BPE tokenizer (for the generators).

Prompts -> token ids (the tokenizer the caller passes: ``TextTokenizer.clip(context_length=L)``) -> a
narrow embedding (the vocabulary has 49k entries, so the table is kept small and projected up) + learned
positions -> a pre-norm transformer encoder with a key-padding mask -> per-token features and their
masked mean. Generators cross-attend to the tokens (binding words to places) and add the pooled vector
to their adaLN condition.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError


class TextEncoder(nn.Module):
    """Args:
    tokenizer: a ``mmtok.tokenizers.text.TextTokenizer`` (padding to its ``context_length``, the most
        tokens read); passed in, so that nn/ (a bottom layer) does not import the tokenizers.
    dim, heads, layers: the transformer.
    embed_dim: width of the token embedding table.
    words: if given, only the BPE tokens of these words (plus the start/end tokens and punctuation)
        get a row of the embedding table and every other token shares one "unknown" row: a model
        that only ever reads a small grammar keeps ~200 rows instead of CLIP's 49,408 (3.2M fewer
        parameters at width 64), and reads any other word as "unknown", which it is.
    """

    def __init__(
        self, tokenizer, dim: int, heads: int, embed_dim: int = 64, layers: int = 2,
        words: tuple[str, ...] | None = None,
    ):  # fmt: skip
        super().__init__()
        self.tokenizer = tokenizer
        self.length = length = tokenizer.context_length
        rows = self.tokenizer.vocab_size
        if words is not None:
            marks = (".", ",", ":", "!", "?", ";")
            known = {i for w in (*words, *marks) for i in self.tokenizer.encode(w)}
            known = sorted(known | set(self.tokenizer("").input_ids[0, :2].tolist()))  # + start, end
            lookup = torch.full((self.tokenizer.vocab_size,), len(known), dtype=torch.long)
            lookup[torch.tensor(known)] = torch.arange(len(known))
            self.register_buffer("lookup", lookup, persistent=False)  # rebuilt from ``words``
            rows = len(known) + 1
        else:
            self.lookup = None
        self.embed = nn.Embedding(rows, embed_dim)
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
        if self.lookup is not None:
            ids = self.lookup[ids]
        h = self.proj(self.embed(ids) + self.pos[: ids.shape[1]])
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return h, mask, pooled
