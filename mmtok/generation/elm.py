"""ELM: a Llama-style causal transformer over a binary tokenizer's codes, with sub-token decomposition.

The binary autoencoder (``BinaryTokenizer``, e.g. ``bin-f8-64``: 8 x 8 positions of K = 32 bits) gives
each position a K-bit code. A 2^K-way softmax is large (65,536 for K = 16, 4 billion for K = 32), so, as
in ELM, the K bits are split into m sub-tokens of K/m bits (``sub_tokens``; 4 x 8 bits = four 256-way
softmaxes):

    input:  m embedding tables (one per sub-token), concatenated and projected back to ``dim``
    output: m heads from the same hidden state; the sub-tokens of a position are sampled independently

Sequence: ``[BOS(condition), code_0, ..., code_{L-2}]`` -> predicts ``code_0 ... code_{L-1}``, in the
order of any entity kind (``order``: raster ``token`` by default; ``cell`` or ``subsample`` permute
the positions). Blocks are pre-norm RMSNorm -> causal self-attention -> [cross-attention to the text
tokens] -> SwiGLU, with learned absolute positions. Conditioning: the BOS token is the class
embedding (digits) or the pooled text vector (shapes), and for text every block also cross-attends to
all prompt tokens (the same ``TextEncoder`` and ``CrossAttention`` as xAR).

Decoding keeps a KV cache (ELM's release re-runs the whole growing prefix every step, which is
quadratic; ``kv_cache=False`` reproduces that for the benchmark). Classifier-free guidance runs the
conditional and null conditions in one doubled batch, on the logits, with a ``constant``, ``linear``
(0 -> ``cfg`` over the positions, as ELM's ``linear``) or ``cosine`` schedule; then temperature,
top-k and top-p per sub-token head. ``temperature=0`` is greedy decoding (what the speculative decoder
in ``speculative.py`` must reproduce exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import SwiGLU
from torch import nn

from ..errors import InputError
from ..hub import MmtokModel, register_model
from ..nn.attention import CrossAttention, KVCache, SelfAttention
from ..tokenizers.entities import make_entities
from ..tokenizers.image_binary import merge_codes, split_codes
from .common import validation_loss
from .xar import Condition, Conditioned

CFG_SCHEDULES = ("constant", "linear", "cosine")


def cfg_scale(schedule: str, cfg: float, i: int, n: int) -> float:
    """Guidance scale at position ``i`` of ``n``: ``constant`` cfg; ``linear`` 1 -> cfg; ``cosine``
    1 -> cfg along half a cosine (slow start, as ELM's ``cos``)."""
    if schedule == "constant" or n <= 1:
        return cfg
    r = i / (n - 1)
    if schedule == "linear":
        return 1 + (cfg - 1) * r
    return 1 + (cfg - 1) * (1 - math.cos(math.pi * r)) / 2


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k and top-p (nucleus) on the last axis; filtered entries become -inf."""
    logits = logits.float() / max(temperature, 1e-8)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass *before* it already reaches top_p (the first one always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


class LlamaBlock(nn.Module):
    """Pre-norm block: RMSNorm -> self-attention (KV cache) -> [RMSNorm -> cross-attention] -> RMSNorm
    -> SwiGLU."""

    def __init__(self, dim: int, heads: int, layer: int, cross: bool, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm3 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = SelfAttention(dim, heads, layer)
        self.norm2 = nn.RMSNorm(dim) if cross else None
        self.cross = CrossAttention(dim, heads) if cross else None
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio))

    def forward(self, x, mask, cache, cond: Condition, layer: int):
        x = x + self.attn(self.norm1(x), mask, cache)
        if self.cross is not None:
            if layer not in cond.kv:  # the prompt is fixed while decoding: project it once
                cond.kv[layer] = self.cross.project_kv(cond.tokens)
            x = x + self.cross(self.norm2(x), cond.kv[layer], cond.mask)
        return x + self.mlp(self.norm3(x))


@register_model
class ELM(Conditioned, MmtokModel):
    """ELM-style discrete AR generator over binary-tokenizer codes (text- or class-conditional).

    Args:
        tokenizer: name of the binary tokenizer whose codes this model generates (for decoding).
        bits: bits per position (K); ``sub_tokens``: m, the number of K/m-bit sub-tokens.
        grid: latent grid side (8 for 64x64 images at f=8).
        order, order_size: the entity kind that orders the positions (``token`` = raster).
        dim, depth, heads, mlp_ratio: the transformer.
        condition, num_classes, text_length, text_dim, text_layers, label_drop: as in ``XAR``.
    """

    task = "image-generator"

    def __init__(
        self,
        tokenizer: str = "bin-f8-64",
        bits: int = 32,
        sub_tokens: int = 4,
        grid: int = 8,
        order: str = "token",
        order_size: Any = None,
        dim: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 8 / 3,
        condition: str = "text",
        num_classes: int = 10,
        text_length: int = 48,
        text_dim: int = 64,
        text_layers: int = 2,
        label_drop: float = 0.1,
    ):
        super().__init__()
        if bits % sub_tokens or dim % sub_tokens:
            raise ValueError(f"bits ({bits}) and dim ({dim}) must be multiples of sub_tokens ({sub_tokens})")
        if order == "scale":
            raise ValueError("codes cannot be area-averaged: ELM orders positions by token/cell/subsample")
        self.tokenizer_name, self.bits, self.sub_tokens, self.grid = tokenizer, bits, sub_tokens, grid
        self.entities = make_entities(order, (grid, grid), order_size)
        self.label_drop = label_drop
        self.sub_vocab = 2 ** (bits // sub_tokens)
        L = self.entities.seq_len
        self.embeds = nn.ModuleList(
            nn.Embedding(self.sub_vocab, dim // sub_tokens) for _ in range(sub_tokens)
        )
        self.embed_proj = nn.Linear(dim, dim)
        self.pos = nn.Parameter(torch.randn(L, dim) * 0.02)
        self._init_condition(dim, heads, condition, num_classes, text_length, text_dim, text_layers)
        self.blocks = nn.ModuleList(
            LlamaBlock(dim, heads, i, condition == "text", mlp_ratio) for i in range(depth)
        )
        self.norm = nn.RMSNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, self.sub_vocab) for _ in range(sub_tokens))

    @property
    def seq_len(self) -> int:
        return self.entities.seq_len

    # -- the network --------------------------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x T x m sub-token ids -> B x T x dim."""
        parts = [table(tokens[..., j]) for j, table in enumerate(self.embeds)]
        return self.embed_proj(torch.cat(parts, dim=-1))

    def hidden(self, h, positions, cond: Condition, mask=None, cache: KVCache | None = None) -> torch.Tensor:
        """Final hidden states of inputs ``h`` (B x T x dim, BOS or embedded codes) at ``positions``."""
        h = h + self.pos[positions]
        for i, block in enumerate(self.blocks):
            h = block(h, mask, cache, cond, i)
        return self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states ... x dim -> sub-token logits ... x m x sub_vocab."""
        return torch.stack([head(h) for head in self.heads], dim=-2)

    def inputs(self, cond: Condition, tokens: torch.Tensor | None) -> torch.Tensor:
        """The input sequence ``[BOS ; embed(tokens)]`` (tokens: B x T x m sub-token ids, or None)."""
        bos = cond.vec[:, None]
        return bos if tokens is None or tokens.shape[1] == 0 else torch.cat([bos, self.embed(tokens)], 1)

    def to_sequence(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes B x H x W (K-bit ints) or B x H x W x m (sub-tokens) -> B x L x m in the model's order."""
        if codes.dim() == 3:
            codes = split_codes(codes, self.bits, self.sub_tokens)
        return self.entities.group(codes.long())

    def to_codes(self, seq: torch.Tensor) -> torch.Tensor:
        """B x L x m sub-tokens in the model's order -> B x H x W K-bit codes (what the tokenizer decodes)."""
        return merge_codes(self.entities.ungroup(seq), self.bits)

    # -- training -----------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        seq = self.to_sequence(batch["codes"])  # B x L x m
        B, L = seq.shape[:2]
        cond = self.dropped_condition(batch, B)
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        h = self.hidden(self.inputs(cond, seq[:, :-1]), torch.arange(L, device=seq.device), cond, causal)
        logits = self.logits(h)  # B x L x m x V
        loss = F.cross_entropy(logits.float().flatten(0, 2), seq.flatten())
        with torch.no_grad():
            acc = (logits.argmax(-1) == seq).float().mean()
        return loss, {"ce": loss.detach(), "bits_per_position": loss.detach() * self.sub_tokens / math.log(2),
                      "token_acc": acc}  # fmt: skip

    def evaluate(self, dataset, device: str | torch.device = "cpu", batch_size: int = 64) -> dict[str, float]:
        """Validation cross-entropy and token accuracy at a fixed seed (sample quality: ``mmtok eval
        generation``)."""
        return validation_loss(self, dataset, device, batch_size)

    # -- decoding -----------------------------------------------------------------------------------

    def check_sample_args(self, cond: Any, cfg: float, cfg_schedule: str, temperature: float, top_k: int,
                          top_p: float) -> list[Any]:  # fmt: skip
        if isinstance(cond, str):
            raise InputError("sample() expects a list of prompts (or class labels), got one string")
        cond = cond.tolist() if torch.is_tensor(cond) else list(cond)
        if not cond:
            raise InputError("nothing to sample: give at least one prompt or class label")
        if self.condition == "class" and any(
            not isinstance(c, int) or not 0 <= c < self.num_classes for c in cond
        ):
            raise InputError(f"class labels must be integers in [0, {self.num_classes - 1}], got {cond}")
        if cfg_schedule not in CFG_SCHEDULES:
            raise InputError(f"cfg_schedule must be one of {', '.join(CFG_SCHEDULES)}, got {cfg_schedule!r}")
        if not math.isfinite(cfg) or cfg < 0 or not math.isfinite(temperature) or temperature < 0:
            raise InputError(
                f"need a finite cfg >= 0 and temperature >= 0, got cfg={cfg}, temperature={temperature}"
            )
        if top_k < 0 or not 0 < top_p <= 1:
            raise InputError(f"need top_k >= 0 and top_p in (0, 1], got top_k={top_k}, top_p={top_p}")
        return cond

    def guided_logits(self, h: torch.Tensor, guided: bool, scale: float) -> torch.Tensor:
        """Sub-token logits of hidden states ``h`` (2B x ... when ``guided``: cond then null halves)."""
        logits = self.logits(h).float()
        if not guided:
            return logits
        cond, null = logits.chunk(2)
        return null + scale * (cond - null)

    def pick(
        self, logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator
    ) -> torch.Tensor:
        """Sub-token ids from logits ... x m x V: argmax when ``temperature == 0``, else a sample."""
        if temperature == 0:
            return logits.argmax(-1)
        probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
        flat = probs.reshape(-1, probs.shape[-1]).cpu()
        ids = torch.multinomial(flat, 1, generator=generator)  # CPU generator: same images on any device
        return ids.view(probs.shape[:-1]).to(logits.device)

    @torch.no_grad()
    def sample(
        self,
        cond: Any,
        cfg: float = 3.0,
        cfg_schedule: str = "linear",
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
        callback: Callable[[int, int], None] | None = None,
        return_sequence: bool = False,
        **flow_settings: Any,
    ) -> torch.Tensor:
        """K-bit codes B x H x W (``return_sequence``: sub-tokens B x L x m in the model's order).

        ``flow_settings`` (``steps``, ``sampler``) are accepted so that one pipeline drives every
        generator; a discrete AR model has no flow and ignores them.
        """
        cond = self.check_sample_args(cond, cfg, cfg_schedule, temperature, top_k, top_p)
        device, B, L, m = self.pos.device, len(cond), self.seq_len, self.sub_tokens
        guided = cfg != 1.0
        c = self.guided_condition(cond, guided)
        out = torch.zeros(B, L, m, dtype=torch.long, device=device)
        cache = KVCache(capacity=L) if kv_cache else None
        if cache is not None:
            cache.writing = True  # every decoded token's keys/values stay for the rest of the image
        x = self.inputs(c, None)  # BOS
        for i in range(L):
            if cache is not None:
                h = self.hidden(x, torch.arange(i, i + 1, device=device), c, None, cache)[:, -1]
            else:  # ELM's release: the whole prefix again, every step
                prefix = out[:, :i].repeat(2 if guided else 1, 1, 1)
                causal = torch.ones(i + 1, i + 1, dtype=torch.bool, device=device).tril()
                h = self.hidden(self.inputs(c, prefix), torch.arange(i + 1, device=device), c, causal)[:, -1]
            logits = self.guided_logits(h, guided, cfg_scale(cfg_schedule, cfg, i, L))
            out[:, i] = self.pick(logits, temperature, top_k, top_p, generator)
            x = self.embed(out[:, i : i + 1].repeat(2 if guided else 1, 1, 1))
            if callback is not None:
                callback(i + 1, L)
        return out if return_sequence else self.to_codes(out)


__all__ = ["CFG_SCHEDULES", "ELM", "cfg_scale", "filter_logits"]
