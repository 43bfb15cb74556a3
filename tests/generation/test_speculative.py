"""Token Recycling speculative decoding: lossless (greedy: identical outputs; sampling: the same
distribution), tree masks, the adjacency table, and fewer forward passes than tokens."""

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from mmtok.errors import InputError
from mmtok.generation.elm import ELM
from mmtok.generation.speculative import SpeculativeELM, TokenRecycling, tree_mask


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
    rec = TokenRecycling(16, k=4, tree=(2, 1))
    assert rec.draft(5, 5) == ([5], [-1], [0])  # nothing recycled yet: no drafts
    rec.update(torch.tensor([5, 7]), torch.tensor([[7, 9, 1, 2], [3, 4, 5, 6]]))
    tokens, parents, depths = rec.draft(5, 5)
    assert tokens == [5, 7, 9, 3] and parents == [-1, 0, 0, 1] and depths == [0, 1, 1, 2]
    assert rec.draft(5, 1)[0] == [5, 7, 9]  # depth-limited near the end of the image
    with pytest.raises(InputError):
        TokenRecycling(16, k=4, tree=(5,))


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
