"""LightCLIP losses: soft-label schedule and targets, relaxed bipartite token matching, MLM masking."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from mmtok.clip import losses as L


def _features(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    v = F.normalize(u + 0.5 * torch.randn(n, d, generator=g), dim=-1)
    return u, v, torch.tensor(10.0)


def test_soft_alpha_ramps_linearly_then_holds():
    assert [L.soft_alpha(s, 0.2, 100) for s in (0, 25, 50, 100, 1000)] == pytest.approx(
        [0, 0.05, 0.1, 0.2, 0.2]
    )
    assert L.soft_alpha(0, 0.2, 0) == 0.2  # no ramp: full softening from the start


def test_soft_loss_at_alpha_zero_is_open_clip_cliploss():
    u, v, scale = _features()
    soft = L.SoftClipLoss(alpha_max=0.2, ramp_steps=100)
    assert soft(u, v, scale, step=0).item() == pytest.approx(L.ClipLoss()(u, v, scale).item(), abs=1e-6)


def test_uniform_soft_targets_are_label_smoothing():
    # (1 - a) e_i + a / (B - 1) on negatives == PyTorch's eps / B on every class with eps = a B / (B - 1).
    u, v, scale = _features(n=5)
    alpha, n = 0.1, 5
    soft = L.SoftClipLoss(alpha_max=alpha, ramp_steps=0, targets="uniform")
    logits = scale * u @ v.T
    labels = torch.arange(n)
    eps = alpha * n / (n - 1)
    expected = (
        F.cross_entropy(logits, labels, label_smoothing=eps)
        + F.cross_entropy(logits.T, labels, label_smoothing=eps)
    ) / 2
    assert soft(u, v, scale).item() == pytest.approx(expected.item(), abs=1e-5)


def test_similarity_targets_follow_the_detached_negatives():
    u, v, scale = _features()
    logits = (scale * u @ v.T).requires_grad_()
    targets = L.SoftClipLoss(targets="similarity").soft_targets(logits, 0.3)
    assert not targets.requires_grad
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    torch.testing.assert_close(targets.diagonal(), torch.full((6,), 0.7))
    # Off the diagonal: 0.3 * softmax over the negatives of each row -> the most similar negative gets most.
    off = logits.detach().clone().fill_diagonal_(float("-inf"))
    torch.testing.assert_close(
        targets[~torch.eye(6, dtype=torch.bool)], (0.3 * off.softmax(1))[~torch.eye(6, dtype=torch.bool)]
    )


def _brute_force(sim: torch.Tensor) -> float:
    """Best total similarity of a one-to-one word->patch assignment (every word when W <= P)."""
    w, p = sim.shape
    if w <= p:
        return max(
            sum(sim[i, c] for i, c in enumerate(cols)).item() for cols in itertools.permutations(range(p), w)
        )
    return max(
        sum(sim[r, i] for i, r in enumerate(rows)).item() for rows in itertools.permutations(range(w), p)
    )


@pytest.mark.parametrize("shape", [(3, 4), (4, 4), (2, 5), (5, 3)])
def test_hungarian_matches_brute_force(shape):
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        sim = torch.randn(1, 1, *shape, generator=g)
        scores, assigned = L.hungarian_word_scores(sim, torch.ones(1, shape[0], dtype=torch.bool))
        assert scores.sum().item() == pytest.approx(_brute_force(sim[0, 0]), abs=1e-5)
        assert int(assigned.sum()) == min(shape)


def test_hungarian_is_one_to_one_where_max_is_not():
    # Two words both closest to patch 0: "max" lets both take it, Hungarian gives the second one patch 1.
    patches = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    words = torch.tensor([[[1.0, 0.0], [1.0, 0.1]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    greedy = L.token_scores(patches, words, mask, "max")
    strict = L.token_scores(patches, words, mask, "hungarian")
    assert strict.item() < greedy.item()
    second = F.normalize(torch.tensor([1.0, 0.1]), dim=0) @ torch.tensor([0.6, 0.8])
    assert strict.item() == pytest.approx((1.0 + second.item()) / 2, abs=1e-5)


def test_token_scores_ignore_masked_words_and_topk1_is_max():
    g = torch.Generator().manual_seed(0)
    patches, words = torch.randn(3, 5, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    by_max = L.token_scores(patches, words, mask, "max")
    assert by_max.shape == (3, 2)
    torch.testing.assert_close(L.token_scores(patches, words, mask, "topk", topk=1), by_max)
    noisy = words.clone()
    noisy[~mask] = 100 * torch.randn_like(noisy[~mask])  # padding content must not matter
    torch.testing.assert_close(L.token_scores(patches, noisy, mask, "max"), by_max)
    # A word equal to a patch scores 1 with that image.
    words2 = patches[0, :2][None]
    assert L.token_scores(
        patches[:1], words2, torch.ones(1, 2, dtype=torch.bool), "max"
    ).item() == pytest.approx(1)


def test_token_contrastive_loss_prefers_aligned_pairs():
    aligned = torch.eye(4) * 0.9
    assert L.token_contrastive_loss(aligned, torch.tensor(10.0)) < L.token_contrastive_loss(
        aligned.flip(0), torch.tensor(10.0)
    )


def test_mask_tokens_masks_words_only_and_at_least_one():
    ids = torch.tensor(
        [[49406, 10, 11, 12, 13, 14, 15, 16, 49407, 0], [49406, 20, 49407, 0, 0, 0, 0, 0, 0, 0]]
    )
    attention = (torch.arange(10)[None] < torch.tensor([[9], [3]])).long()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        masked, labels = L.mask_tokens(ids, attention, 49408, prob=0.15, generator=g)
        chosen = masked == 49408
        assert chosen.any(1).all()  # every caption with a word gets a mask
        assert not chosen[:, 0].any() and not chosen[0, 8] and not chosen[1, 2:].any()
        torch.testing.assert_close(labels[chosen], ids[chosen])
        assert (labels[~chosen] == -100).all()
    big = torch.randint(1, 1000, (200, 40))
    masked, _ = L.mask_tokens(big, torch.ones_like(big), 49408, prob=0.3, generator=g)
    assert (masked == 49408).float().mean().item() == pytest.approx(0.3 * 38 / 40, abs=0.03)
