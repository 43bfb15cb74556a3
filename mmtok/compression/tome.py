"""ToMe baseline: token merging by bipartite soft matching (after Bolya et al., ICLR 2023), our own code.

One merge round on N tokens: alternate tokens form sets A (even positions) and B (odd); every A token
finds its most similar B token by the cosine of the head-averaged keys; the ``r`` most similar edges
are merged -- each merged A token is averaged into its B partner, weighted by the sizes (how many input
tokens each already holds) -- and sizes add up. At most half the tokens go per round, so ``keep`` < 0.5
takes several rounds (keys are merged the same way between rounds). The merged tokens continue through
the remaining blocks with **proportional attention** (a ``log(size)`` bias on the attention logits, so
a merged token is attended to as the tokens it replaces) and a size-weighted average pool: both live in
``TowerRunner``. ToMe's paper merges a few tokens in every block; here, to compare methods at equal
cost, the whole reduction happens after block ``layer`` like the other compressors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from .base import AttnInfo, Compressed, Compressor, budget


def bipartite_merge(
    x: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor, rep: torch.Tensor, source: torch.Tensor, r: int
):
    """One round merging ``r`` tokens. x [B, N, C], keys [B, N, D], sizes [B, N], rep [B, N] (input
    position of each token's representative), source [B, N0] (current slot of every input token).
    Returns the same five for N - r tokens: unmerged A tokens first, then the B tokens."""
    b, n, c = x.shape
    if not 0 <= r <= n // 2:
        raise ValueError(f"a bipartite round merges at most half the tokens ({n // 2}), asked {r}")
    if r == 0:
        return x, keys, sizes, rep, source
    dev = x.device
    a_pos, b_pos = torch.arange(0, n, 2, device=dev), torch.arange(1, n, 2, device=dev)
    k = F.normalize(keys.float(), dim=-1)
    scores = k[:, a_pos] @ k[:, b_pos].transpose(1, 2)  # [B, Na, Nb] cosine
    best, partner = scores.max(-1)  # each A token's best B token
    order = best.argsort(-1, descending=True)
    merged, kept = order[:, :r], order[:, r:].sort(-1).values  # positions within A
    dst = partner.gather(1, merged)  # positions within B

    def take(t, pos):  # t [B, M, ...] gathered at pos [B, m]
        return t.gather(1, pos.view(*pos.shape, *([1] * (t.ndim - 2))).expand(-1, -1, *t.shape[2:]))

    s = sizes.float()
    sa, sb = s[:, a_pos], s[:, b_pos]
    xa, xb = x[:, a_pos].float(), x[:, b_pos].float()
    ka, kb = keys[:, a_pos].float(), keys[:, b_pos].float()
    sm = take(sa, merged)
    # weighted sums into B, then normalise by the new sizes
    xb_sum = (xb * sb[..., None]).scatter_add(
        1, dst[..., None].expand(-1, -1, c), take(xa, merged) * sm[..., None]
    )
    kb_sum = (kb * sb[..., None]).scatter_add(
        1, dst[..., None].expand(-1, -1, kb.shape[-1]), take(ka, merged) * sm[..., None]
    )
    sb_new = sb.scatter_add(1, dst, sm)
    xb_new = xb_sum / sb_new.clamp(min=1e-9)[..., None]
    kb_new = kb_sum / sb_new.clamp(min=1e-9)[..., None]
    n_keep = kept.shape[1]
    x_out = torch.cat([take(xa, kept), xb_new], 1).to(x.dtype)
    k_out = torch.cat([take(ka, kept), kb_new], 1).to(keys.dtype)
    s_out = torch.cat([take(sa, kept), sb_new], 1)
    rep_out = torch.cat([take(rep[:, a_pos], kept), rep[:, b_pos]], 1)
    # new slot of every current token, then of every input token
    new_slot = torch.empty(b, n, dtype=torch.long, device=dev)
    new_slot[:, b_pos] = n_keep + torch.arange(len(b_pos), device=dev)
    a_slot = torch.empty(b, len(a_pos), dtype=torch.long, device=dev)
    a_slot.scatter_(1, kept, torch.arange(n_keep, device=dev).expand(b, -1))
    a_slot.scatter_(1, merged, n_keep + dst)
    new_slot[:, a_pos] = a_slot
    source_out = torch.where(source >= 0, new_slot.gather(1, source.clamp(min=0)), source)
    return x_out, k_out, s_out, rep_out, source_out


class ToMe(Compressor):
    """Merge down to round(keep N) tokens after block ``layer`` by repeated bipartite soft matching."""

    name = "tome"

    def __init__(self, layer: int = 1):
        super().__init__()
        if layer < 1:
            raise InputError("ToMe matches on a block's keys: layer must be >= 1")
        self.layer = int(layer)

    def compress(self, tokens: torch.Tensor, attn: AttnInfo | None, keep: float = 0.5) -> Compressed:
        if attn is None or attn.keys is None:
            raise InputError("ToMe needs the block's keys")
        b, n = tokens.shape[:2]
        target = budget(n, keep)
        keys = attn.keys.mean(1)  # [B, N, Dh], head-averaged
        sizes = attn.sizes.float() if attn.sizes is not None else torch.ones(b, n, device=tokens.device)
        rep = torch.arange(n, device=tokens.device).expand(b, -1)
        source = rep.clone()
        x = tokens
        while x.shape[1] > target:
            r = min(x.shape[1] - target, x.shape[1] // 2)
            x, keys, sizes, rep, source = bipartite_merge(x, keys, sizes, rep, source, r)
        return Compressed(x, rep, source, sizes)
