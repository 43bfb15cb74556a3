"""Baselines at the same budgets: random drop and grid pooling.

- ``RandomDrop``: keeps round(keep N) tokens chosen uniformly at random (seeded, per image).
- ``Pool2x2``: average pooling of the patch grid. At keep 0.25 it is exactly 2x2 average pooling;
  other budgets pool to the (h, w) grid with h * w closest to round(keep N) from below (e.g. 8x6 at
  keep 0.75, 8x4 at 0.5, 3x2 at 0.1 on an 8x8 grid; adaptive bins). A pooled token's size is the
  number of patches in its bin, so later blocks weigh it by proportional attention, like ToMe.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from .base import RECYCLE, AttnInfo, Compressed, Compressor, budget, recycle, select


class RandomDrop(Compressor):
    name = "random"

    def __init__(self, layer: int = 1, seed: int = 0, recycle: str = "size"):
        super().__init__()
        if recycle not in RECYCLE:
            raise InputError(f"recycle must be one of {', '.join(RECYCLE)}, got {recycle!r}")
        self.layer, self.seed, self.recycle = int(layer), int(seed), recycle
        self.needs_attn = recycle != "none"  # recycling compares keys

    def compress(self, tokens: torch.Tensor, attn: AttnInfo | None, keep: float = 0.5) -> Compressed:
        b, n = tokens.shape[:2]
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        index = torch.rand(b, n, generator=g).argsort(1)[:, : budget(n, keep)].to(tokens.device)
        sizes = attn.sizes if attn is not None else None
        keys = attn.keys if attn is not None else None
        return recycle(select(tokens, index, sizes), tokens, keys, sizes, self.recycle)


def pool_grid(h: int, w: int, n: int) -> tuple[int, int]:
    """The (gh, gw) with gh <= h, gw <= w and gh * gw <= n largest (ties: the squarer)."""
    best = (1, 1)
    for gh in range(1, h + 1):
        gw = min(w, n // gh)
        if gw < 1:
            continue
        if gh * gw > best[0] * best[1] or (
            gh * gw == best[0] * best[1] and abs(gh - gw) < abs(best[0] - best[1])
        ):
            best = (gh, gw)
    return best


def _bins(size: int, out: int) -> list[tuple[int, int]]:  # adaptive pooling bins (as torch computes them)
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


class Pool2x2(Compressor):
    name = "pool"
    needs_attn = False

    def __init__(self, layer: int = 1):
        super().__init__()
        self.layer = int(layer)

    def compress(self, tokens: torch.Tensor, attn: AttnInfo | None, keep: float = 0.5) -> Compressed:
        b, n, c = tokens.shape
        h = w = math.isqrt(n)
        if h * w != n:
            raise InputError(f"pooling needs a square token grid, got {n} tokens")
        if attn is not None and attn.sizes is not None:
            raise InputError("pooling runs on unmerged tokens only")
        gh, gw = pool_grid(h, w, budget(n, keep))
        grid = tokens.transpose(1, 2).reshape(b, c, h, w)
        pooled = torch.nn.functional.adaptive_avg_pool2d(grid.float(), (gh, gw)).to(tokens.dtype)
        out = pooled.flatten(2).transpose(1, 2)
        rows, cols = _bins(h, gh), _bins(w, gw)
        sizes = torch.tensor([(r1 - r0) * (c1 - c0) for r0, r1 in rows for c0, c1 in cols], dtype=torch.float)
        row_bin = [next(i for i, (r0, r1) in enumerate(rows) if r0 <= r < r1) for r in range(h)]
        col_bin = [next(j for j, (c0, c1) in enumerate(cols) if c0 <= cc < c1) for cc in range(w)]
        source = torch.tensor([i * gw + j for i in row_bin for j in col_bin])
        index = torch.tensor([r0 * w + c0 for r0, _ in rows for c0, _ in cols])
        dev = tokens.device
        return Compressed(
            out,
            index.to(dev).expand(b, -1),
            source.to(dev).expand(b, -1),
            sizes.to(dev).expand(b, -1),
        )


class AttentionRank(Compressor):
    """Keeps the round(keep N) tokens receiving the most attention (mean over queries and heads) in the
    block at ``layer`` (at 0: block 1's attention on the input tokens) -- the untrained ranking the
    explainability predictor must beat, and TCC's selection without its sampling or outliers."""

    name = "attn"
    needs_probs = True

    def __init__(self, layer: int = 0, recycle: str = "size"):
        super().__init__()
        if recycle not in RECYCLE:
            raise InputError(f"recycle must be one of {', '.join(RECYCLE)}, got {recycle!r}")
        self.layer, self.recycle = int(layer), recycle

    def compress(self, tokens: torch.Tensor, attn: AttnInfo | None, keep: float = 0.5) -> Compressed:
        if attn is None or attn.probs is None:
            raise InputError("attention ranking needs the block's attention probabilities")
        received = attn.probs.float().mean((1, 2))
        index = received.topk(budget(tokens.shape[1], keep), dim=1).indices
        return recycle(select(tokens, index, attn.sizes), tokens, attn.keys, attn.sizes, self.recycle)
