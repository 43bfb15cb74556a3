"""Token Recycling speculative decoding: lossless (greedy: identical outputs; sampling: the same
distribution), tree masks, the adjacency table, and fewer forward passes than tokens."""

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from mmtok.errors import InputError
from mmtok.generation.elm import ELM
from mmtok.generation.speculative import (
    SpeculativeELM,
    TokenRecycling,
    code_probability,
    sample_excluding,
    top_codes,
    tree_mask,
)


def _model(seed=0, **kw) -> ELM:
    torch.manual_seed(seed)
    args = dict(bits=8, sub_tokens=2, grid=4, dim=32, depth=2, heads=2, condition="class")
    return ELM(**(args | kw)).double().eval()


def test_tree_mask_is_ancestors_and_self():
    parents = [-1, 0, 0, 1, 1, 3]
    mask = tree_mask(parents, "cpu")
    assert mask[5].tolist() == [True, True, False, True, False, True]
    assert mask[2].tolist() == [True, False, True, False, False, False]
    assert torch.equal(mask, mask.tril())


def test_drafts_follow_the_adjacency_breadth_first():
    rec = TokenRecycling(k=4, tree=(2, 1))
    assert rec.draft(5, 5) == ([5], [-1], [0])  # nothing recycled yet: no drafts
    rec.update(torch.tensor([5, 7]), torch.tensor([[7, 9, 1, 2], [3, 4, 5, 6]]))
    tokens, parents, depths = rec.draft(5, 5)
    assert tokens == [5, 7, 9, 3] and parents == [-1, 0, 0, 1] and depths == [0, 1, 1, 2]
    assert rec.draft(5, 1)[0] == [5, 7, 9]  # depth-limited near the end of the image
    with pytest.raises(InputError):
        TokenRecycling(k=4, tree=(5,))


@pytest.mark.parametrize("condition", ["class", "text"])
def test_greedy_outputs_are_identical_to_plain_decoding(condition):
    same = 0
    for seed in range(4):
        m = _model(seed, condition=condition, text_length=16)
        spec = SpeculativeELM(m, tree=(3, 2, 1, 1, 1))
        conds = [0, 4, 7] if condition == "class" else ["a red circle", "two blue stars", "a green heart"]
        for c in conds:
            for cfg in (1.0, 2.5):
                same += torch.equal(
                    m.sample([c], temperature=0, cfg=cfg), spec.sample([c], temperature=0, cfg=cfg)
                )
        assert spec.stats.tokens == 6 * m.seq_len and spec.stats.passes <= spec.stats.tokens
    assert same == 4 * 3 * 2


def test_repetitive_outputs_need_fewer_passes():
    m = _model(3)
    with torch.no_grad():  # a model that mostly repeats one code, as an image background does
        for head in m.heads:
            head.bias[5] += 6.0
    spec = SpeculativeELM(m)
    for c in range(4):
        assert torch.equal(spec.sample([c], temperature=0), m.sample([c], temperature=0))
    assert spec.stats.tokens_per_pass > 2.0, spec.stats.as_dict()


def test_sampling_keeps_the_output_distribution():
    m = _model(1, bits=4, grid=2)  # 16 codes per position, 4 positions
    with torch.no_grad():  # peaky, so that drafts are often right and often wrong
        for head in m.heads:
            head.weight.mul_(8.0)
    n = 800
    plain = m.sample([2] * n, cfg=1.5, temperature=1.0, generator=torch.Generator().manual_seed(0))
    spec = SpeculativeELM(m, tree=(2, 1, 1))
    fast = spec.sample([2] * n, cfg=1.5, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert spec.stats.accepted > 0.2 * spec.stats.tokens  # the rule was exercised, not bypassed
    for pos in range(4):
        a = plain.flatten(1)[:, pos].numpy()
        b = fast.flatten(1)[:, pos].numpy()
        values = np.union1d(a, b)
        table = np.array([[np.sum(a == v) for v in values], [np.sum(b == v) for v in values]])
        table = table[:, table.sum(0) >= 5]  # chi-square needs non-tiny cells
        assert chi2_contingency(table).pvalue > 1e-3, (pos, table)


def _joint(logits):
    """The dense V**m joint log-probabilities (what the heads' product means), for small V**m only."""
    logp = logits.double().log_softmax(-1)
    joint = logp[:, 0]
    for j in range(1, logp.shape[1]):
        joint = (joint[:, :, None] + logp[:, j, None, :]).flatten(1)
    return joint


@pytest.mark.parametrize("m,v", [(2, 16), (3, 8), (4, 4)])
def test_top_codes_match_the_dense_joint(m, v):
    torch.manual_seed(m)
    logits = torch.randn(20, m, v, dtype=torch.float64) * 3
    dense = _joint(logits)
    fast = top_codes(logits, 8)
    # the same k codes, in the same order of probability (random logits: no ties)
    assert torch.equal(fast, dense.topk(8, dim=-1).indices)


def test_sample_excluding_is_the_residual_distribution():
    torch.manual_seed(0)
    q = torch.randn(3, 4, dtype=torch.float64).mul(1.5).softmax(-1)  # 3 heads of 4: 64 codes
    joint = _joint(q.log()[None])[0].exp()
    rejected = [[0, 1, 2], [0, 1, 3], [2, 2, 2], [1, 0, 0]]
    ids = [x[0] * 16 + x[1] * 4 + x[2] for x in rejected]
    assert abs(code_probability(q, rejected[2]) - float(joint[ids[2]])) < 1e-12
    expected = joint.clone()
    expected[ids] = 0
    expected /= expected.sum()
    g = torch.Generator().manual_seed(0)
    n = 6000
    counts = torch.zeros(64)
    for _ in range(n):
        x = sample_excluding(q, rejected, g)
        counts[x[0] * 16 + x[1] * 4 + x[2]] += 1
    assert counts[ids].sum() == 0  # never a rejected code
    keep = expected * n >= 5
    from scipy.stats import chisquare

    obs, exp = counts[keep].numpy(), (expected[keep] * n).numpy()
    assert chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


def test_wide_codes_decode_without_a_dense_table():
    # 32-bit codes in 4 sub-tokens (the widened binary tokenizer's): a dense adjacency table or joint
    # would need 2**32 rows; drafts come from a dict and the joint is never formed.
    m = _model(2, bits=32, sub_tokens=4, grid=3)
    spec = SpeculativeELM(m, tree=(3, 2, 1))
    for c in range(3):
        assert torch.equal(spec.sample([c], temperature=0), m.sample([c], temperature=0))
    out = spec.sample([1, 2], temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 3) and int(out.max()) < 2**32
    assert 0 < len(spec.recycling.adjacency) <= 5 * 9 * 8
