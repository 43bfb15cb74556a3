"""TCC: token-level correlation-guided compression (after Zhang et al., arXiv 2407.14439), parameter-free.

No code of the paper exists; this is our reading of its figure (``shared/reference/clip_compression.md``
section 3.1), adapted to a CLIP tower without a class token:

1. **Information density** from patch-patch key correlation at block ``layer``: token i is *redundant*
   when some other token's key has cosine > ``tau`` with its own (heads concatenated); redundancy r is
   the redundant share, density rho = 1 - r. A page of blank paper is all repeats (rho ~ 0); dense text
   has few (rho ~ 1).
2. **Budget** per image: ``fixed`` (round(keep N) for every image), ``density`` (ceil(rho N), capped at
   round(keep N): a redundant image keeps fewer), or ``shared`` -- the multi-crop form: the batch is the
   sub-images of one large image, the total budget round(keep N) x crops is split in proportion to each
   crop's density (a blank margin gets little, a dense paragraph a lot).
3. **Which tokens**: the tower pools by averaging and has no [CLS], so the mean (pooled) query stands
   in for the paper's [CLS] query. ``importance="unique-query"`` (default) scores token j by its
   uniqueness (1 - its highest key cosine to another token: the patch-patch correlation again) times
   the mean query's attention to it (heads averaged); ``query`` (attention only), ``unique`` and
   ``received`` (attention received, averaged over queries) are the ablations. IQR outliers
   (a_j > Q3 + 1.5 IQR: the global-information tokens) are always kept; the rest of the budget is
   filled by ``select="topk"`` (largest a_j) or ``select="sample"`` (draws without replacement with
   p ~ a, by the Gumbel top-k trick; seeded, so repeatable).
4. Dropped tokens give their area to their most similar kept token (``recycle="size"``, see
   ``base.recycle``): the average pool needs it. The kept tokens continue through blocks
   ``layer + 1 ..`` of the tower (so those blocks cost keep x).

tau = 0.99 was chosen on calibration pages of the document test bed (``document.py``, seed 1) and is
measured on other pages (seed 0) by ``mmtok eval compress``.

    tcc = TCC(layer=1, select="topk")
    out = TowerRunner(model.clip.visual)(images, tcc, keep=0.5)   # out.compressed.extra["density"]
    crops = multicrop(page, 64)                                  # global view + 64x64 sub-images
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import RECYCLE, AttnInfo, Compressed, Compressor, budget, recycle, select

SELECTS = ("topk", "sample")
IMPORTANCE = ("query", "received", "unique", "unique-query")
BUDGETS = ("fixed", "density", "shared")


def key_similarity(keys: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity [B, N, N] of the keys [B, H, N, Dh] (heads concatenated); the diagonal and
    padding (size 0) are set to -2, below any cosine."""
    b, h, n, d = keys.shape
    k = F.normalize(keys.float().transpose(1, 2).reshape(b, n, h * d), dim=-1)
    sim = (k @ k.transpose(1, 2)).masked_fill(torch.eye(n, dtype=torch.bool, device=k.device), -2.0)
    if sizes is not None:
        sim = sim.masked_fill((sizes <= 0)[:, None, :], -2.0)
    return sim


def key_density(
    keys: torch.Tensor, tau: float, sizes: torch.Tensor | None = None, sim: torch.Tensor | None = None
) -> torch.Tensor:
    """Information density rho [B] in [0, 1] from keys [B, H, N, Dh]: 1 - share of tokens whose key has
    cosine > ``tau`` with another token's key. Padding (size 0) is left out."""
    sim = key_similarity(keys, sizes) if sim is None else sim
    b, n = sim.shape[:2]
    real = torch.ones(b, n, dtype=torch.bool, device=sim.device) if sizes is None else sizes > 0
    redundant = (sim.max(-1).values > tau) & real
    return 1.0 - redundant.float().sum(1) / real.float().sum(1).clamp(min=1)


def mean_query_attention(probs: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """a [B, N]: attention each token receives, averaged over heads and (real) queries; sums to 1."""
    a = probs.float().mean(1)  # [B, N, N]
    if sizes is None:
        return a.mean(1)
    w = sizes.float()
    return (a * w[..., None]).sum(1) / w.sum(1, keepdim=True)


def pooled_query_attention(queries: torch.Tensor, keys: torch.Tensor, sizes=None) -> torch.Tensor:
    """a [B, N]: attention of the *mean* query (the pooled token's stand-in for [CLS]) over the keys,
    averaged over heads; padding (size 0) gets none."""
    w = (
        torch.ones(queries.shape[0], queries.shape[2], device=queries.device)
        if sizes is None
        else sizes.float()
    )
    q = (queries.float() * w[:, None, :, None]).sum(2) / w.sum(1)[:, None, None]  # [B, H, Dh]
    q = q * queries.shape[-1] ** -0.5
    logits = (q[:, :, None, :] @ keys.float().transpose(-2, -1))[:, :, 0]  # [B, H, N]
    if sizes is not None:
        logits = logits + sizes.float().log()[:, None, :]
    return logits.softmax(-1).mean(1)


def iqr_outliers(a: torch.Tensor) -> torch.Tensor:
    """[B, N] bool: a_j > Q3 + 1.5 IQR (per row)."""
    q1, q3 = torch.quantile(a.float(), torch.tensor([0.25, 0.75], device=a.device), dim=1, keepdim=True)
    return a > q3 + 1.5 * (q3 - q1)


class TCC(Compressor):
    """Token-level correlation-guided compression after block ``layer`` (see the module docstring).

    Args:
        layer: compress after this many blocks (1 = after the first block).
        tau: key cosine above which a token counts as a repeat.
        select: ``topk`` or ``sample``.
        budget: ``fixed``, ``density`` or ``shared`` (multi-crop).
        outliers: always keep the IQR outliers of the mean-query attention.
        min_tokens: floor of a density budget.
        seed: seed of ``sample``.
        recycle: what becomes of the dropped tokens (``base.recycle``): ``size`` (default), ``merge``
            or ``none``.
    """

    name = "tcc"

    def __init__(
        self,
        layer: int = 1,
        tau: float = 0.99,
        select: str = "topk",
        budget: str = "fixed",
        outliers: bool = True,
        min_tokens: int = 1,
        seed: int = 0,
        recycle: str = "size",
        importance: str = "unique-query",
    ):
        super().__init__()
        if importance not in IMPORTANCE:
            raise InputError(f"TCC importance must be one of {', '.join(IMPORTANCE)}, got {importance!r}")
        self.importance = importance
        self.needs_probs = importance == "received"
        if recycle not in RECYCLE:
            raise InputError(f"TCC recycle must be one of {', '.join(RECYCLE)}, got {recycle!r}")
        self.recycle = recycle
        if select not in SELECTS:
            raise InputError(f"TCC select must be one of {', '.join(SELECTS)}, got {select!r}")
        if budget not in BUDGETS:
            raise InputError(f"TCC budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
        if layer < 1:
            raise InputError("TCC reads a block's keys and attention: layer must be >= 1")
        self.layer, self.tau, self.select, self.budget_mode = int(layer), float(tau), select, budget
        self.outliers, self.min_tokens, self.seed = bool(outliers), int(min_tokens), int(seed)

    def with_budget(self, mode: str) -> TCC:
        """The same compressor with another budget mode."""
        return TCC(self.layer, self.tau, self.select, mode, self.outliers, self.min_tokens, self.seed,
                   self.recycle, self.importance)  # fmt: skip

    def budgets(self, density: torch.Tensor, n: int, keep: float) -> torch.Tensor:
        """Tokens kept per image [B] (long) for densities [B]."""
        cap = budget(n, keep)
        if self.budget_mode == "fixed":
            return torch.full_like(density, cap, dtype=torch.long)
        if self.budget_mode == "density":
            return (density * n).ceil().long().clamp(min=min(self.min_tokens, cap), max=cap)
        # shared: split round(keep N) x B tokens in proportion to density (at least min_tokens each)
        total = cap * len(density)
        weights = density.clamp(min=1e-3)
        share = weights / weights.sum() * total
        counts = share.floor().long().clamp(min=self.min_tokens, max=n)
        left = total - int(counts.sum())
        order = (share - share.floor()).argsort(descending=True)
        i = 0
        while left > 0 and bool((counts < n).any()):  # hand out the remainder by largest fraction
            j = order[i % len(order)]
            if counts[j] < n:
                counts[j] += 1
                left -= 1
            i += 1
        return counts

    def token_importance(self, attn: AttnInfo, sim: torch.Tensor | None = None) -> torch.Tensor:
        """[B, N] distribution over tokens: which to keep."""
        if self.importance == "received":
            if attn.probs is None:
                raise InputError("TCC importance 'received' needs the block's attention probabilities")
            return mean_query_attention(attn.probs, attn.sizes)
        if attn.queries is None and self.importance != "unique":
            raise InputError("TCC needs the block's queries")
        if self.importance == "query":
            return pooled_query_attention(attn.queries, attn.keys, attn.sizes)
        sim = key_similarity(attn.keys, attn.sizes) if sim is None else sim
        unique = (1 - sim.max(-1).values).clamp(min=1e-6)
        if self.importance == "unique-query":
            unique = unique * pooled_query_attention(attn.queries, attn.keys, attn.sizes)
        return unique / unique.sum(1, keepdim=True)

    def compress(self, tokens: torch.Tensor, attn: AttnInfo | None, keep: float = 0.5) -> Compressed:
        if attn is None or attn.keys is None:
            raise InputError("TCC needs the block's keys")
        b, n = tokens.shape[:2]
        sim = key_similarity(attn.keys, attn.sizes)  # once: density, uniqueness, recycling
        density = key_density(attn.keys, self.tau, attn.sizes, sim=sim)
        counts = self.budgets(density, n, keep)
        a = self.token_importance(attn, sim)
        score = a.clamp(min=1e-12).log()
        if self.select == "sample":
            g = torch.Generator(device="cpu").manual_seed(self.seed)
            u = torch.rand(score.shape, generator=g).to(score.device).clamp(1e-9, 1 - 1e-9)
            score = score - (-u.log()).log()  # + Gumbel noise: top-k == sampling without replacement
        if self.outliers:
            score = torch.where(iqr_outliers(a), score + 1e4, score)
        if attn.sizes is not None:
            score = score.masked_fill(attn.sizes <= 0, -math.inf)
        width = int(counts.max())
        index = score.topk(width, dim=1).indices
        valid = torch.arange(width, device=tokens.device)[None] < counts[:, None].to(tokens.device)
        out = select(tokens, index, attn.sizes, valid=None if bool(valid.all()) else valid)
        out = out._replace(extra={"density": density, "counts": counts, "importance": a})
        return recycle(out, tokens, attn.keys, attn.sizes, self.recycle, sim=sim)


def multicrop(page: torch.Tensor, crop: int = 64) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Large image [3, H, W] -> (global view [1, 3, crop, crop], sub-images [rows * cols, 3, crop, crop],
    (rows, cols)). Sides are padded with the border colour (replicate) to multiples of ``crop``."""
    if page.ndim != 3 or page.shape[0] != 3:
        raise InputError(f"multicrop expects a [3, H, W] image, got {tuple(page.shape)}")
    h, w = page.shape[-2:]
    rows, cols = math.ceil(h / crop), math.ceil(w / crop)
    padded = F.pad(page[None], (0, cols * crop - w, 0, rows * crop - h), mode="replicate")[0]
    tiles = padded.unfold(1, crop, crop).unfold(2, crop, crop)  # [3, rows, cols, crop, crop]
    tiles = tiles.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, crop, crop)
    view = F.interpolate(page[None], size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)
    return view, tiles.contiguous(), (rows, cols)


@torch.no_grad()
def encode_multicrop(runner, page: torch.Tensor, keep: float, crop: int = 64, tcc: TCC | None = None) -> dict:
    """The multi-crop form on one large image: the global view keeps round(keep N) tokens; the
    sub-images share round(keep N) x crops tokens in proportion to their densities. Returns pooled
    embeddings (global first), per-crop densities and budgets, and the keep-maps."""
    tcc = tcc or TCC()
    view, tiles, layout = multicrop(page, crop)
    glob = runner(view, tcc.with_budget("fixed"), keep)
    shared = tcc.with_budget("shared")
    subs = runner(tiles, shared, keep)
    extra = subs.compressed.extra
    return {
        "embeds": torch.cat([glob.pooled, subs.pooled]),
        "density": extra["density"],
        "counts": extra["counts"],
        "global_count": int(glob.compressed.extra["counts"][0]),
        "source": subs.compressed.source,
        "layout": layout,
        "grid": subs.grid,
    }
