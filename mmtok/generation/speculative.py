"""Train-free speculative decoding for ELM, after Token Recycling (Luo et al., 2024).

Candidate next tokens that the model produced while decoding are likely to come back (in an image:
the same background code, row after row), so they are *recycled* as drafts:

    adjacency[v] = the top-k next tokens the model predicted the last time it read token v
                   (a dict over the codes seen so far: a dense table would be 2**K rows, 16 GiB
                   for 32-bit codes)
    draft tree   = breadth-first from the last decoded token through ``adjacency`` with a static
                   branching per depth (``tree``; e.g. (3, 2, 1, 1, ...): 3 children of the root, 2 of
                   each of those, then chains; the default is (2, 1, 1))
    verify       = ONE forward pass over [last token ; tree nodes] on top of the KV cache, with a
                   tree attention mask (a node sees the cache, its ancestors and itself)
    accept       = the longest path the model agrees with, plus one token from the model at its end
    update       = ``adjacency[token of every tree node] = top-k of that node's prediction``

A "token" here is a whole position: its m sub-tokens merged into one K-bit code (the draft must
guess the whole code). The heads are independent given the hidden state, so the joint distribution
over the 2**K codes is never formed: its top-k is pruned head by head (``top_codes``), a code's
probability is the product of its sub-tokens', and the residual of the sampling rule is sampled head by
head (``sample_excluding``). Every verification yields at least one token, so decoding never takes more
passes than plain decoding, and the cache keeps only the accepted path's keys and values.

Lossless. Greedy (``temperature=0``): a draft is accepted only when it equals the argmax, so the
output is exactly plain greedy decoding's (tested over many seeds, in float64 where ties cannot flip).
Sampling: the drafts are point masses, and the children of a node are tried in turn with the standard
multi-candidate rule (SpecInfer): accept child x with probability p(x) under the current residual
distribution; on rejection set p(x) = 0 and renormalise; if every child is rejected, sample from the
residual. The result is distributed exactly as plain sampling from p (the same guided, filtered
distribution ``ELM.sample`` uses), which a test checks statistically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ..nn.attention import KVCache
from ..tokenizers.image_binary import merge_codes, split_codes
from .elm import ELM, cfg_scale, filter_logits

# Narrow and shallow: at batch 1 on a CPU each drafted node costs nearly as much as a plain step, and
# the shapes ELMs accept about one draft per pass. On the shipped elm-shapes64 (fp32, one thread) this
# tree gives 1.30x plain decoding's tokens/s, where (3, 2, 1, 1, 1, 1, 1, 1) gives 0.78x
# (benchmarks/bench_speculative.py; docs/generation.md).
DEFAULT_TREE = (2, 1, 1)


@dataclass
class SpeculativeStats:
    tokens: int = 0
    passes: int = 0  # forward passes of the network (plain decoding: one per token)
    drafted: int = 0  # tree nodes verified
    accepted: int = 0  # drafted tokens accepted (the bonus token of each pass is not counted)
    per_pass: list[int] = field(default_factory=list)

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / max(self.passes, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "passes": self.passes, "drafted": self.drafted,
                "accepted": self.accepted, "tokens_per_pass": round(self.tokens_per_pass, 3)}  # fmt: skip


class TokenRecycling:
    """The adjacency matrix of recycled candidates and the draft-tree builder."""

    def __init__(self, k: int = 8, tree: tuple[int, ...] = DEFAULT_TREE):
        if not tree or any(w < 1 or w > k for w in tree):
            raise InputError(f"tree branching must be a non-empty list of ints in 1..{k}, got {list(tree)}")
        self.k, self.tree = k, tuple(int(w) for w in tree)
        # Only codes the model has read get a row: a 64-position image touches a few hundred, while
        # a dense table needs a row for each of the 2**K codes.
        self.adjacency: dict[int, list[int]] = {}

    def update(self, tokens: torch.Tensor, candidates: torch.Tensor) -> None:
        """``adjacency[tokens[i]] = candidates[i]`` (N and N x k, best first)."""
        for t, c in zip(tokens.tolist(), candidates[:, : self.k].tolist(), strict=True):
            self.adjacency[int(t)] = c

    def draft(self, root: int, max_depth: int) -> tuple[list[int], list[int], list[int]]:
        """Breadth-first draft tree from token ``root``: (tokens, parents, depths), the root first
        (parent -1, depth 0); siblings are distinct."""
        tokens, parents, depths = [root], [-1], [0]
        frontier = [0]
        for depth, width in enumerate(self.tree[:max_depth], 1):
            nxt = []
            for f in frontier:
                for cand in self.adjacency.get(tokens[f], [])[:width]:
                    tokens.append(cand), parents.append(f), depths.append(depth)
                    nxt.append(len(tokens) - 1)
            if not nxt:
                break
            frontier = nxt
        return tokens, parents, depths


def tree_mask(parents: list[int], device) -> torch.Tensor:
    """N x N bool: node i may attend to node j when j is i or one of its ancestors."""
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
    return mask.to(device)


def top_codes(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Per-head logits N x m x V -> the k most likely full codes, N x k, best first (independent
    heads, the first head the most significant sub-token, as ``merge_codes``).

    Exact without the V**m joint: every sub-token of a top-k code is in its head's top-k (otherwise
    k better codes differ from it in that sub-token alone), and the same holds for each prefix of
    heads, so pruning to k after each head loses nothing.
    """
    logp = logits.float().log_softmax(-1)
    v = logp.shape[-1]
    vals, codes = logp[:, 0].topk(min(k, v), dim=-1)
    for j in range(1, logp.shape[1]):
        hv, hi = logp[:, j].topk(min(k, v), dim=-1)
        joint = (vals[:, :, None] + hv[:, None, :]).flatten(1)
        cand = (codes[:, :, None] * v + hi[:, None, :]).flatten(1)
        vals, best = joint.topk(min(k, joint.shape[1]), dim=-1)
        codes = cand.gather(1, best)
    return codes


def code_probability(q: torch.Tensor, sub: list[int]) -> float:
    """Probability of one full code (its sub-tokens ``sub``) under per-head probabilities m x V."""
    return float(torch.prod(q[torch.arange(len(sub)), torch.tensor(sub, dtype=torch.long)]))


def sample_excluding(q: torch.Tensor, rejected: list[list[int]], generator=None) -> list[int]:
    """Sub-tokens of one code drawn from the product of the heads' distributions ``q`` (m x V)
    conditioned on not being one of ``rejected`` (the residual of the sampling rule), head by head:
    P(x_j = a | prefix, not rejected) is proportional to q_j(a) times the mass left after removing
    the rejected codes that continue the prefix with a. Exact, and linear in the rejected codes."""
    out, live = [], rejected
    for j in range(q.shape[0]):
        w = q[j].clone()
        for x in live:  # remove what each rejected code below this prefix would take from a = x[j]
            w[x[j]] -= q[j, x[j]] * code_probability(q[j + 1 :], x[j + 1 :])
        w = w.clamp(min=0)
        if float(w.sum()) <= 0:  # rounding only: the rule never rejects all of the mass
            w = q[j]
        a = int(torch.multinomial(w / w.sum(), 1, generator=generator))
        out.append(a)
        live = [x for x in live if x[j] == a]
    return out


class SpeculativeELM:
    """Token Recycling decoding for one ELM; the adjacency matrix persists across calls (warm drafts).

    spec = SpeculativeELM(model)
    codes = spec.sample([3], temperature=0)      # == model.sample([3], temperature=0)
    spec.stats.tokens_per_pass
    """

    def __init__(self, model: ELM, k: int = 8, tree: tuple[int, ...] = DEFAULT_TREE):
        self.model = model
        self.recycling = TokenRecycling(k, tree)
        self.stats = SpeculativeStats()

    def reset(self) -> None:
        self.recycling.adjacency.clear()
        self.stats = SpeculativeStats()

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
        return_sequence: bool = False,
        **flow_settings: Any,
    ) -> torch.Tensor:
        """The same outputs as ``ELM.sample`` (greedy: identical; sampling: the same distribution),
        one condition at a time (drafts are accepted per sequence)."""
        m = self.model
        cond = m.check_sample_args(cond, cfg, cfg_schedule, temperature, top_k, top_p)
        seqs = [self._one(c, cfg, cfg_schedule, temperature, top_k, top_p, generator) for c in cond]
        out = torch.stack(seqs)
        return out if return_sequence else m.to_codes(out)

    def _head_probabilities(self, logits, temperature, top_k, top_p) -> torch.Tensor:
        """Guided logits 1 x m x V -> the per-head probabilities plain sampling uses, m x V (float64)."""
        return filter_logits(logits, temperature, top_k, top_p).softmax(-1)[0].cpu().double()

    def _one(self, cond, cfg, cfg_schedule, temperature, top_k, top_p, generator) -> torch.Tensor:
        m, rec = self.model, self.recycling
        device, L, bits, parts = m.pos.device, m.seq_len, m.bits, m.sub_tokens
        guided = cfg != 1.0
        c = m.guided_condition([cond], guided)
        reps = 2 if guided else 1
        cache = KVCache(capacity=2 * L)  # the cache plus one verification tree
        cache.writing = True
        # The first token comes from BOS alone: one ordinary step.
        h = m.hidden(m.inputs(c, None), torch.arange(1, device=device), c, None, cache)[:, -1]
        first = self._choose(m.guided_logits(h, guided, cfg_scale(cfg_schedule, cfg, 0, L)),
                             temperature, top_k, top_p, generator)  # fmt: skip
        out = [first]
        self.stats.passes += 1
        while len(out) < L:
            n = len(out)  # tokens decoded; the last one (position n of the inputs) is not cached yet
            tokens, parents, depths = rec.draft(out[-1], max_depth=L - 1 - n)
            ids = split_codes(torch.tensor(tokens, device=device), bits, parts)[None].repeat(reps, 1, 1)
            positions = n + torch.tensor(depths, device=device)
            tm = tree_mask(parents, device)
            mask = torch.cat([torch.ones(len(tokens), len(cache), dtype=torch.bool, device=device), tm], 1)
            old = len(cache)
            hid = m.hidden(m.embed(ids), positions, c, mask, cache)  # reps x N x dim; writes all nodes
            logits = m.logits(hid).float()  # reps x N x m x V
            if guided:  # each node predicts position n + depth, with that position's guidance scale
                scales = [cfg_scale(cfg_schedule, cfg, min(n + d, L - 1), L) for d in depths]
                s = torch.tensor(scales, device=device, dtype=logits.dtype)[:, None, None]
                logits = logits[1] + s * (logits[0] - logits[1])
            else:
                logits = logits[0]
            # Recycle: every node's top-k predictions become the candidates after its token.
            rec.update(torch.tensor(tokens), top_codes(logits, rec.k))
            path, bonus = self._accept(logits, tokens, parents, temperature, top_k, top_p, generator)
            keep = torch.tensor([0, *path], device=device)  # the root and the accepted nodes
            cache.keep(old, keep)
            new = [tokens[i] for i in path] + [bonus]
            out += new[: L - len(out)]
            self.stats.passes += 1
            self.stats.drafted += len(tokens) - 1
            self.stats.accepted += len(path)
            self.stats.per_pass.append(len(new))
        self.stats.tokens += L
        seq = torch.tensor(out[:L], device=device)
        return split_codes(seq, bits, parts)

    def _choose(self, logits, temperature, top_k, top_p, generator) -> int:
        """One full code from guided logits 1 x m x V (greedy or a sample), as ``ELM.pick`` would."""
        sub = self.model.pick(logits, temperature, top_k, top_p, generator)  # 1 x m
        return int(merge_codes(sub, self.model.bits)[0])

    def _sub_tokens(self, code: int) -> list[int]:
        return split_codes(torch.tensor([code]), self.model.bits, self.model.sub_tokens)[0].tolist()

    def _accept(self, logits, tokens, parents, temperature, top_k, top_p, generator) -> tuple[list[int], int]:
        """Walk the tree from the root: (accepted node indices, the token the model adds at the end)."""
        children: dict[int, list[int]] = {}
        for i, p in enumerate(parents):
            if p >= 0:
                children.setdefault(p, []).append(i)
        path, cur = [], 0
        while True:
            kids = children.get(cur, [])
            if temperature == 0:
                best = self._choose(logits[cur : cur + 1], 0.0, 0, 1.0, None)
                nxt = next((i for i in kids if tokens[i] == best), None)
                if nxt is None:
                    return path, best
            else:
                q = self._head_probabilities(logits[cur : cur + 1], temperature, top_k, top_p)
                nxt, rejected, total = None, [], 1.0
                for i in kids:  # siblings are distinct codes
                    sub = self._sub_tokens(tokens[i])
                    px = code_probability(q, sub)
                    if float(torch.rand((), generator=generator, dtype=torch.float64)) * total < px:
                        nxt = i
                        break
                    rejected.append(sub)  # rejected: the residual distribution
                    total -= px
                if nxt is None:
                    sub = sample_excluding(q, rejected, generator)
                    return path, int(merge_codes(torch.tensor([sub]), self.model.bits)[0])
            path.append(nxt)
            cur = nxt


__all__ = [
    "DEFAULT_TREE",
    "SpeculativeELM",
    "SpeculativeStats",
    "TokenRecycling",
    "code_probability",
    "sample_excluding",
    "top_codes",
    "tree_mask",
]
