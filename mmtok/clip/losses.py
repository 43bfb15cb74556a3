"""LightCLIP's training objectives, each switchable on its own (``LightCLIP`` kwargs).

1. ``SoftClipLoss`` -- instance level: open_clip's ``ClipLoss`` whose one-hot targets are softened
   progressively. Pairs in a batch are not strictly one-to-one (two "handwritten sevens" are both right
   for either image), so a growing share ``alpha_t`` of each row's target mass goes to the negatives:
   ``q_i = (1 - alpha_t) e_i + alpha_t w_i`` with ``alpha_t = alpha_max * min(1, t / ramp_steps)`` and
   ``w_i`` uniform over the negatives (label smoothing) or a softmax of their detached similarities
   (near-duplicates get more). The schedule starts hard so the towers first learn the true pairs.
2. ``token_scores`` + ``token_contrastive_loss`` -- token level: patch-word alignment by relaxed bipartite
   matching. Each word is matched to its best patch (``max``, FILIP's token-wise maximum), to the mean of
   its ``topk`` best, or one-to-one by the Hungarian algorithm (scipy); the pair score is the mean over
   the caption's words and feeds a second in-batch contrastive loss.
3. ``mask_tokens`` -- the masking of masked language modelling (the fusion module and MLM head live in
   ``model.py``: they are layers, not a loss).

Design notes (ours; the LightCLIP paper's exact formulas are not public): ``docs/clip.md``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

SOFT_TARGETS = ("uniform", "similarity")
TOKEN_MATCHES = ("max", "topk", "hungarian")

__all__ = [
    "ClipLoss",
    "SigLipLoss",
    "SoftClipLoss",
    "hungarian_word_scores",
    "mask_tokens",
    "soft_alpha",
    "token_contrastive_loss",
    "token_scores",
]


def soft_alpha(step: int, alpha_max: float, ramp_steps: int) -> float:
    """Share of target mass on the negatives at training step ``step``: a linear ramp to ``alpha_max``."""
    if ramp_steps <= 0:
        return float(alpha_max)
    return float(alpha_max) * min(1.0, max(0, step) / ramp_steps)


class SoftClipLoss(ClipLoss):
    """``ClipLoss`` with progressively softened targets (see the module docstring).

    Args:
        alpha_max: final share of each row's target mass spread over the negatives (0 = ``ClipLoss``).
        ramp_steps: steps of the linear ramp from 0 to ``alpha_max`` (0: ``alpha_max`` from the start).
        targets: ``"similarity"`` (softmax of the detached logits over the negatives) or ``"uniform"``.

    Single-process only (``world_size`` 1): the soft targets are built from the full local logits.
    """

    def __init__(self, alpha_max: float = 0.2, ramp_steps: int = 1000, targets: str = "similarity", **kwargs):
        super().__init__(**kwargs)
        if targets not in SOFT_TARGETS:
            raise ValueError(f"targets must be one of {SOFT_TARGETS}, got {targets!r}")
        if self.world_size > 1:
            raise ValueError("SoftClipLoss gathers nothing across processes: use world_size 1")
        self.alpha_max, self.ramp_steps, self.targets = float(alpha_max), int(ramp_steps), targets

    def soft_targets(self, logits: torch.Tensor, alpha: float) -> torch.Tensor:
        """Row-stochastic target matrix for square ``logits`` (positives on the diagonal)."""
        n = logits.shape[0]
        eye = torch.eye(n, device=logits.device, dtype=torch.bool)
        if n == 1 or alpha == 0:
            return eye.float()
        if self.targets == "uniform":
            negatives = (~eye).float() / (n - 1)
        else:  # detached: the targets must not pull the logits towards themselves
            negatives = logits.detach().float().masked_fill(eye, float("-inf")).softmax(dim=1)
        return (1 - alpha) * eye.float() + alpha * negatives

    def forward(
        self, image_features, text_features, logit_scale, logit_bias=None, step: int = 0, output_dict=False
    ):
        logits_per_image, logits_per_text = self.get_logits(
            image_features, text_features, logit_scale, logit_bias
        )
        alpha = soft_alpha(step, self.alpha_max, self.ramp_steps)
        loss = (
            F.cross_entropy(logits_per_image.float(), self.soft_targets(logits_per_image, alpha))
            + F.cross_entropy(logits_per_text.float(), self.soft_targets(logits_per_text, alpha))
        ) / 2
        return {"contrastive_loss": loss} if output_dict else loss


# ----------------------------------------------------------------------------- token level


def hungarian_word_scores(sim: torch.Tensor, word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one word-patch matching per (image, text) pair, maximising total similarity.

    Args:
        sim: ``[I, T, W, P]`` word-patch similarities.
        word_mask: ``[T, W]`` bool, the real words of each text.

    Returns:
        ``(scores, assigned)``, both ``[I, T, W]``: the similarity of each word to its assigned patch
        (differentiable through ``sim``; the assignment itself is not) and whether the word got a patch
        (with more words than patches some cannot; they score 0).
    """
    from scipy.optimize import linear_sum_assignment  # only this option needs scipy

    n_img, n_txt = sim.shape[:2]
    cost = sim.detach().float().cpu().numpy()
    index = np.zeros(sim.shape[:3], dtype=np.int64)
    assigned = np.zeros(sim.shape[:3], dtype=bool)
    masks = word_mask.cpu().numpy()
    for t in range(n_txt):
        words = np.flatnonzero(masks[t])
        if words.size == 0:
            continue
        for i in range(n_img):
            rows, cols = linear_sum_assignment(cost[i, t][words], maximize=True)
            index[i, t, words[rows]] = cols
            assigned[i, t, words[rows]] = True
    index_t = torch.from_numpy(index).to(sim.device)
    assigned_t = torch.from_numpy(assigned).to(sim.device)
    return sim.gather(-1, index_t.unsqueeze(-1)).squeeze(-1) * assigned_t, assigned_t


def token_scores(
    patch_tokens: torch.Tensor,
    word_tokens: torch.Tensor,
    word_mask: torch.Tensor,
    match: str = "max",
    topk: int = 2,
) -> torch.Tensor:
    """Pair scores ``[I, T]`` from token-level alignment (relaxed bipartite matching).

    Args:
        patch_tokens: ``[I, P, D]`` image tokens in the joint space (any norm; normalised here).
        word_tokens: ``[T, W, D]`` text tokens in the joint space.
        word_mask: ``[T, W]`` bool, True for the words to align (not SOT/EOT/padding).
        match: ``"max"`` (each word takes its best patch), ``"topk"`` (mean of its ``topk`` best) or
            ``"hungarian"`` (strict one-to-one assignment; words beyond the patch count are dropped).

    Returns:
        Mean over each text's words of the matched similarity, for every (image, text) pair.
    """
    if match not in TOKEN_MATCHES:
        raise ValueError(f"match must be one of {TOKEN_MATCHES}, got {match!r}")
    patches = F.normalize(patch_tokens.float(), dim=-1)
    words = F.normalize(word_tokens.float(), dim=-1)
    sim = torch.einsum("ipd,twd->itwp", patches, words)  # [I, T, W, P]
    mask = word_mask.to(sim.device, torch.bool)
    if match == "max":
        per_word = sim.amax(-1)
    elif match == "topk":
        per_word = sim.topk(min(topk, sim.shape[-1]), dim=-1).values.mean(-1)
    else:
        per_word, assigned = hungarian_word_scores(sim, mask)
        mask = mask[None] & assigned  # more words than patches: score the assigned words only
    weights = mask.expand_as(per_word).float()
    return (per_word * weights).sum(-1) / weights.sum(-1).clamp_min(1)


def token_contrastive_loss(scores: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric in-batch cross-entropy over square token-level ``scores`` (positives on the diagonal)."""
    logits = logit_scale * scores
    labels = torch.arange(scores.shape[0], device=scores.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ----------------------------------------------------------------------------- masked language modelling


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask_token_id: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random ``prob`` share of each caption's words by ``mask_token_id``.

    SOT (position 0), EOT (the last real position) and padding are never masked; every caption with at
    least one word gets at least one mask, so no row is wasted. Returns ``(masked_ids, labels)`` where
    ``labels`` holds the original id at masked positions and -100 (ignored by cross-entropy) elsewhere.
    """
    lengths = attention_mask.sum(1, keepdim=True)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    words = (positions >= 1) & (positions < lengths - 1)
    draw = torch.rand(input_ids.shape, generator=generator, device="cpu").to(input_ids.device)
    chosen = (draw < prob) & words
    # Rows that drew no mask: mask their word with the smallest draw instead.
    forced = draw.masked_fill(~words, 2.0).argmin(1, keepdim=True)
    empty = ~chosen.any(1, keepdim=True) & words.any(1, keepdim=True)
    chosen |= (positions == forced) & empty
    labels = input_ids.masked_fill(~chosen, -100)
    return input_ids.masked_fill(chosen, mask_token_id), labels
