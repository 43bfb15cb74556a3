"""The compressor interface and a tower runner that compresses between the blocks of a timm ViT.

A **compressor** maps a token set to a smaller one::

    out = compressor.compress(tokens, attn, keep=0.5)   # -> Compressed(tokens, index, source, sizes)
    kept, index_map = out                              # unpacks as (kept tokens, index map)

- ``tokens`` [B, N, C]: the tower's tokens after block ``l`` (or its input tokens for ``l = 0``);
- ``attn``: an ``AttnInfo`` of the block where compression happens (keys, queries and values
  [B, H, N, Dh], token ``sizes`` [B, N], and attention probabilities [B, H, N, N] for compressors that
  set ``needs_probs``), or None where a compressor needs none;
- ``keep``: fraction of tokens to keep, in (0, 1].

``Compressed.index`` [B, n] holds the input position of every output token (for a merged token: the
position of its representative); ``Compressed.source`` [B, N] maps every input token to the output slot
that holds it (-1: dropped) -- the keep-map; ``Compressed.sizes`` [B, n] counts the input tokens behind
each output token (0 marks padding when images of one batch keep different counts).

``TowerRunner`` runs the CLIP image tower (``model.clip.visual``: an open_clip ``TimmModel`` around a timm
``VisionTransformer``) block by block with timm's own modules, so a compressor can act between blocks: the
blocks after it run on fewer tokens. Token sizes other than one enter attention as a ``log(size)`` bias
(ToMe's proportional attention: a merged token counts as the tokens it holds, padding as none) and the
final average pool as weights. With no compressor, or a compressor that keeps every token in order,
the runner's output equals ``visual(images)`` exactly (``tests/compression``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


class AttnInfo(NamedTuple):
    """What a compressor may read from the block where it acts: attention ``probs`` [B, H, N, N] (softmax
    over keys, proportional bias included; None unless asked for), ``keys``, ``queries`` and ``values``
    [B, H, N, Dh] (as the block computes them) and token ``sizes`` [B, N]."""

    probs: torch.Tensor | None
    keys: torch.Tensor | None
    sizes: torch.Tensor | None = None
    queries: torch.Tensor | None = None  # [B, H, N, Dh]
    values: torch.Tensor | None = None  # [B, H, N, Dh]


@dataclass
class Compressed:
    tokens: torch.Tensor  # [B, n, C] kept (or merged) tokens
    index: torch.Tensor  # [B, n] input position of each output token (its representative)
    source: torch.Tensor  # [B, N] output slot of each input token, -1 when dropped
    sizes: torch.Tensor  # [B, n] input tokens behind each output token (0: padding)
    extra: dict | None = None  # method-specific by-products (e.g. TCC's density estimate)
    pruned: bool = False  # tokens are a plain subset of the input (``tokens == input[index]``)

    def _replace(self, **changes) -> Compressed:
        return dataclasses.replace(self, **changes)

    def __iter__(self):  # ``kept, index_map = compressor.compress(...)``
        return iter((self.tokens, self.index))


def check_keep(keep: float) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep):
        raise InputError(f"keep must be a number in (0, 1], got {keep!r}")
    if not 0 < keep <= 1:
        raise InputError(f"keep must be in (0, 1] (the fraction of tokens kept), got {keep}")
    return float(keep)


def budget(n_tokens: int, keep: float) -> int:
    """Tokens kept of ``n_tokens`` at fraction ``keep`` (at least one)."""
    return max(1, min(n_tokens, round(check_keep(keep) * n_tokens)))


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens [B, N, C], index [B, n] -> [B, n, C]."""
    return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))


def select(
    tokens: torch.Tensor, index: torch.Tensor, sizes: torch.Tensor | None = None, valid=None
) -> Compressed:
    """A pruning result: keep ``index`` [B, n] (sorted here, so order is preserved) of ``tokens``.
    ``valid`` [B, n] (bool) marks real entries when rows keep different counts (the rest is padding)."""
    b, n_in = tokens.shape[:2]
    if valid is None:
        index = index.sort(1).values
        valid = torch.ones_like(index, dtype=torch.bool)
    else:  # sort real entries first (by position), padding last
        key = torch.where(valid, index, index + n_in)
        order = key.argsort(1)
        index, valid = index.gather(1, order), valid.gather(1, order)
    kept = gather_tokens(tokens, index)
    in_sizes = torch.ones(b, n_in, device=tokens.device) if sizes is None else sizes.float()
    out_sizes = in_sizes.gather(1, index) * valid
    source = torch.full((b, n_in), -1, dtype=torch.long, device=tokens.device)
    rows, cols = valid.nonzero(as_tuple=True)
    source[rows, index[rows, cols]] = cols
    return Compressed(kept, index, source, out_sizes, pruned=True)


RECYCLE = ("size", "merge", "none")


def recycle(
    c: Compressed,
    tokens: torch.Tensor,
    keys: torch.Tensor | None,
    sizes,
    mode: str,
    sim: torch.Tensor | None = None,
) -> Compressed:
    """Give the dropped tokens of a pruning result to their most similar kept token (key cosine).

    ``size``: the kept token's features stay, its size grows by the dropped tokens' sizes, so the tower's
    average pool and proportional attention still weigh every image region by its area (a CLIP tower
    that pools by averaging reads object size from those proportions); ``merge``: also average the
    features in, size-weighted (as PruMerge); ``none``: plain dropping. ``keys`` [B, H, N, Dh] (None: the
    tokens themselves are compared), or ``sim`` [B, N, N]: their cosines, when already computed.
    Dropped positions are listed in ``extra["dropped"]``."""
    if mode not in RECYCLE:
        raise InputError(f"recycle must be one of {', '.join(RECYCLE)}, got {mode!r}")
    dropped = c.source < 0
    in_sizes = torch.ones(dropped.shape, device=tokens.device) if sizes is None else sizes.float()
    dropped = dropped & (in_sizes > 0)
    extra = dict(c.extra or {}) | {"dropped": dropped}
    if mode == "none" or not bool(dropped.any()):
        return dataclasses.replace(c, extra=extra)
    b, n_in = dropped.shape
    if sim is not None:
        sim = sim.gather(2, c.index[:, None, :].expand(-1, n_in, -1))  # [B, N, n]
    else:
        if keys is None:
            k = F.normalize(tokens.float(), dim=-1)
        else:
            k = F.normalize(keys.float().transpose(1, 2).reshape(b, n_in, -1), dim=-1)
        sim = k @ gather_tokens(k, c.index).transpose(1, 2)  # [B, N, n]
    sim = sim.masked_fill((c.sizes <= 0)[:, None, :], -math.inf)  # never into padding
    source = torch.where(dropped, sim.argmax(-1), c.source)
    live = source >= 0
    slot = source.clamp(min=0)
    weight = in_sizes * live
    new_sizes = torch.zeros_like(c.sizes).scatter_add(1, slot, weight)
    out_tokens = c.tokens
    if mode == "merge":
        width = tokens.shape[-1]
        sums = torch.zeros(c.tokens.shape, dtype=torch.float, device=tokens.device)
        sums.scatter_add_(1, slot[..., None].expand(-1, -1, width), tokens.float() * weight[..., None])
        merged = sums / new_sizes.clamp(min=1e-9)[..., None]
        out_tokens = torch.where((new_sizes > 0)[..., None], merged, c.tokens.float()).to(c.tokens.dtype)
    return Compressed(out_tokens, c.index, source, new_sizes, extra, pruned=mode == "size")


class Compressor(nn.Module):
    """Base class. ``layer``: compress after this many full-size blocks (0 = at the tower's input).
    ``needs_attn``: the runner must hand over block ``layer``'s keys and queries (for ``layer`` 0: those
    the first block computes on the input tokens); ``needs_probs``: its attention probabilities too."""

    name = "none"
    layer = 1
    needs_attn = True
    needs_probs = False

    def compress(self, tokens: torch.Tensor, attn: AttnInfo | None, keep: float = 0.5) -> Compressed:
        raise NotImplementedError

    def forward(self, tokens, attn, keep=0.5):  # nn.Module call == compress
        return self.compress(tokens, attn, keep)


class Identity(Compressor):
    """Keeps every token in order (the uncompressed reference)."""

    name = "full"
    needs_attn = False

    def compress(self, tokens, attn, keep=1.0):
        b, n = tokens.shape[:2]
        index = torch.arange(n, device=tokens.device).expand(b, -1)
        sizes = attn.sizes if attn is not None and attn.sizes is not None else None
        return select(tokens, index, sizes)


# ----------------------------------------------------------------------------- the tower runner


def _grid(n: int) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise InputError(f"{n} patch tokens do not form a square grid")
    return side, side


@dataclass
class TowerOutput:
    pooled: torch.Tensor  # [B, E] unnormalised image embedding (visual head applied)
    tokens: torch.Tensor  # [B, n, C] final (normed) trunk tokens
    sizes: torch.Tensor  # [B, n]
    compressed: Compressed | None  # what the compressor returned (keep-map in .source)
    grid: tuple[int, int]  # patch grid of the input


class TowerRunner(nn.Module):
    """Runs a CLIP image tower (open_clip ``TimmModel`` with a timm ``VisionTransformer`` trunk) block by
    block; ``forward(images, compressor, keep)`` compresses after block ``compressor.layer``.

    Inputs larger than the tower's native size get bilinearly resampled position embeddings (timm's
    ``resample_abs_pos_embed``), so the same tower runs on 128x128 inputs (256 tokens) or document crops.
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        trunk = getattr(visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "blocks") or not hasattr(trunk, "patch_embed"):
            raise InputError("token compression needs a ViT image tower (timm VisionTransformer trunk)")
        if getattr(trunk, "num_prefix_tokens", 0) != 0 or getattr(trunk, "global_pool", "avg") != "avg":
            raise InputError("the tower runner supports ViTs without class token and with average pooling")
        self.visual = visual
        self.trunk = trunk
        self.depth = len(trunk.blocks)
        self.patch = trunk.patch_embed.patch_size[0]
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    # -- pieces ---------------------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with position embeddings [B, N, C] and the patch grid (h, w)."""
        trunk = self.trunk
        h, w = images.shape[-2] // self.patch, images.shape[-1] // self.patch
        if (h, w) == tuple(trunk.patch_embed.grid_size):
            x = trunk.patch_embed(images)
            x = trunk._pos_embed(x)
        else:
            if images.shape[-2] % self.patch or images.shape[-1] % self.patch:
                raise InputError(f"image sides must be multiples of the patch size {self.patch}")
            x = trunk.patch_embed.proj(images).flatten(2).transpose(1, 2)
            x = trunk.patch_embed.norm(x)
            x = x + self._pos_embed((h, w)).to(x.dtype)
        x = trunk.norm_pre(trunk.patch_drop(x))
        return x, (h, w)

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        from timm.layers import resample_abs_pos_embed

        if grid not in self._pos_cache:
            with torch.no_grad():
                self._pos_cache[grid] = resample_abs_pos_embed(
                    self.trunk.pos_embed,
                    new_size=list(grid),
                    old_size=list(self.trunk.patch_embed.grid_size),
                    num_prefix_tokens=0,
                )
        return self._pos_cache[grid]

    @staticmethod
    def size_bias(sizes: torch.Tensor | None) -> torch.Tensor | None:
        """Proportional-attention bias [B, 1, 1, N] = log(size) (-inf for padding), None when all ones."""
        if sizes is None:
            return None
        return sizes.float().log()[:, None, None, :]

    @staticmethod
    def _qkv(block, x):
        """A block's queries, keys (normed as the block does) and values [B, H, N, Dh], from ``x``."""
        attn = block.attn
        h = block.norm1(x)
        b, n, _ = h.shape
        qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    @staticmethod
    def _probs(block, q, k, bias) -> torch.Tensor:
        logits = (q * block.attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        return logits.softmax(-1)

    def attention_probs(self, block, x, sizes=None, need_probs: bool = True) -> AttnInfo:
        """What ``block`` would compute on ``x`` before attending: probabilities (when ``need_probs``),
        keys, queries and values -- the runner reuses the latter for the kept tokens (no recomputation)."""
        q, k, v = self._qkv(block, x)
        probs = self._probs(block, q, k, self.size_bias(sizes)) if need_probs else None
        return AttnInfo(probs, k, sizes, q, v)

    def run_block(
        self,
        block,
        x: torch.Tensor,
        sizes: torch.Tensor | None = None,
        need_attn: bool = False,
        need_probs: bool = False,
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, AttnInfo | None]:
        """One timm block, with the size bias in attention. ``need_attn`` also returns its keys and
        queries (and attention probabilities when ``need_probs``); ``qkv`` gives queries, keys and values
        already computed for ``x``. The block's output is computed with timm's own modules and ops."""
        bias = self.size_bias(sizes)
        if not need_attn and qkv is None:
            if bias is None:
                return block(x), None
            return block(x, attn_mask=bias.to(x.dtype)), None
        attn = block.attn
        q, k, v = self._qkv(block, x) if qkv is None else qkv
        b, _, n, _ = q.shape
        mask = bias.to(q.dtype) if bias is not None else None
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = attn.proj(attn.norm(o.transpose(1, 2).reshape(b, n, attn.attn_dim)))
        x = x + block.drop_path1(block.ls1(o))
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        if not need_attn:
            return x, None
        probs = self._probs(block, q, k, bias) if need_probs else None
        return x, AttnInfo(probs, k, sizes, q, v)

    def head(self, x: torch.Tensor, sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norm, (size-weighted) average pool and projection: (pooled [B, E], normed tokens)."""
        x = self.trunk.norm(x)
        if sizes is None:
            pooled = x.mean(1)
        else:
            w = sizes.to(x.dtype)[..., None]
            pooled = (x * w).sum(1) / w.sum(1)
        pooled = self.trunk.head(self.trunk.head_drop(self.trunk.fc_norm(pooled)))
        return self.visual.head(pooled), x

    # -- the whole tower ------------------------------------------------------------------------

    def forward(
        self,
        images: torch.Tensor,
        compressor: Compressor | None = None,
        keep: float = 1.0,
    ) -> TowerOutput:
        x, grid = self.embed(images)
        sizes = None
        compressed = None
        layer = compressor.layer if compressor is not None else self.depth + 1
        if compressor is not None and not 0 <= layer <= self.depth:
            raise InputError(f"compression layer must be in 0..{self.depth}, got {layer}")
        need = compressor is not None and compressor.needs_attn
        probs = need and compressor.needs_probs
        reuse = None
        if compressor is not None and layer == 0:
            info = self.attention_probs(self.trunk.blocks[0], x, need_probs=probs) if need else None
            compressed = compressor.compress(x, info, keep)
            x, sizes = compressed.tokens, _none_if_ones(compressed.sizes)
            if info is not None and compressed.pruned:  # block 1's q, k, v of the kept tokens: no recompute
                reuse = tuple(
                    _gather_heads(t, compressed.index) for t in (info.queries, info.keys, info.values)
                )
        for i, block in enumerate(self.trunk.blocks):
            at = compressor is not None and layer == i + 1
            x, info = self.run_block(
                block, x, sizes, need_attn=at and need, need_probs=at and probs, qkv=reuse if i == 0 else None
            )
            if at:
                if info is None:
                    info = AttnInfo(None, None, sizes)
                compressed = compressor.compress(x, info, keep)
                x, sizes = compressed.tokens, _none_if_ones(compressed.sizes)
        pooled, tokens = self.head(x, sizes)
        if sizes is None:
            sizes = torch.ones(tokens.shape[:2], device=tokens.device)
        return TowerOutput(pooled, tokens, sizes, compressed, grid)


def _gather_heads(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] at token positions ``index`` [B, n] -> [B, H, n, D]."""
    return t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))


def _none_if_ones(sizes: torch.Tensor) -> torch.Tensor | None:
    return None if bool((sizes == 1).all()) else sizes


# ----------------------------------------------------------------------------- keep-map image


def keep_map_image(
    image: torch.Tensor | np.ndarray,
    source: torch.Tensor,
    grid: tuple[int, int],
    scale: int = 4,
    dim: float = 0.25,
    dropped: torch.Tensor | None = None,
) -> np.ndarray:
    """Keep-map for display: ``image`` ([3, H, W] in [-1, 1] or HxWx3 uint8) enlarged ``scale`` times,
    dropped patches dimmed to ``dim`` of their brightness and hatched in red (dimming alone is invisible
    on a dark image), each kept group outlined; patches merged into
    one token share a tint. ``source`` [N]: output slot of each patch (-1 dropped); ``dropped`` [N]
    (bool, optional) marks pruned patches whose area was recycled into a kept token (``recycle``): they
    are dimmed too, and outlined with the token that took their area. Returns HxWx3 uint8."""
    if torch.is_tensor(image):
        pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
        pixels = pixels.permute(1, 2, 0).numpy()
    else:
        pixels = np.asarray(image, dtype=np.uint8)
    pixels = np.kron(pixels, np.ones((scale, scale, 1), dtype=np.uint8)).astype(np.float32)
    h, w = grid
    ph, pw = pixels.shape[0] // h, pixels.shape[1] // w
    src = source.detach().cpu().view(h, w).numpy()
    gone = np.zeros((h, w), dtype=bool) if dropped is None else dropped.detach().cpu().view(h, w).numpy()
    counts = np.bincount(src[src >= 0], minlength=1)
    rng = np.random.default_rng(0)
    tints = rng.uniform(0.35, 1.0, size=(max(len(counts), 1), 3)) * 255
    out = pixels.copy()
    yy, xx = np.mgrid[0:ph, 0:pw]
    stripes = ((yy + xx) % 4 == 0)[..., None]  # diagonal hatching, one pixel line in four
    hatch = np.array([220.0, 40.0, 40.0])

    def drop(tile):
        tile *= dim
        tile[:] = np.where(stripes, hatch, tile)

    for r in range(h):
        for c in range(w):
            tile = out[r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
            s = src[r, c]
            if s < 0:
                drop(tile)
                continue
            if gone[r, c]:
                drop(tile)
            elif counts[s] > 1 and dropped is None:  # merged with others: tint by group
                tile[:] = 0.6 * tile + 0.4 * tints[s]
            edge = (255.0, 220.0, 0.0)
            if r == 0 or src[r - 1, c] != s:
                tile[0, :] = edge
            if r == h - 1 or src[r + 1, c] != s:
                tile[-1, :] = edge
            if c == 0 or src[r, c - 1] != s:
                tile[:, 0] = edge
            if c == w - 1 or src[r, c + 1] != s:
                tile[:, -1] = edge
    return out.clip(0, 255).astype(np.uint8)
