"""The loop's parts: LR schedule, weight-decay groups, and the (seed, step) data order."""

import math

import pytest
import torch
from torch import nn

from mmtok.train.trainer import StepSampler, lr_factor, param_groups


def test_warmup_then_cosine():
    f = lambda s: lr_factor(s, warmup=10, max_steps=110, schedule="cosine", min_ratio=0.1)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warm-up to the peak
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)  # floor: min_lr_ratio
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_linear_and_constant_schedules():
    lin = lambda s: lr_factor(s, warmup=0, max_steps=100, schedule="linear", min_ratio=0.0)
    assert [lin(s) for s in (0, 25, 50, 100)] == pytest.approx([1.0, 0.75, 0.5, 0.0])
    const = lambda s: lr_factor(s, warmup=4, max_steps=100, schedule="constant", min_ratio=0.0)
    assert [const(s) for s in (0, 3, 50, 99)] == pytest.approx([0.25, 1.0, 1.0, 1.0])
    # No warm-up: the first step already runs at the peak LR.
    assert lr_factor(0, warmup=0, max_steps=10, schedule="cosine", min_ratio=0) == 1.0
    assert math.isclose(lr_factor(5, warmup=0, max_steps=10, schedule="cosine", min_ratio=0), 0.5)


def test_wsd_holds_the_peak_then_decays_over_the_last_steps():
    f = lambda s, n=100: lr_factor(s, warmup=10, max_steps=n, schedule="wsd", min_ratio=0.1, decay_steps=20)
    assert [f(s) for s in (0, 9, 10, 79)] == pytest.approx([0.1, 1.0, 1.0, 1.0])  # warm-up, stable
    assert [f(s) for s in (80, 90, 100, 400)] == pytest.approx([1.0, 0.55, 0.1, 0.1])  # linear to the floor
    # Lengthening the run (--max-steps) during the stable phase leaves every step so far unchanged.
    assert all(f(s, 100) == f(s, 300) for s in range(80))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.pos = nn.Parameter(torch.zeros(5, 4))
        self.conv = nn.Conv2d(4, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)

    def no_weight_decay(self):
        return {"pos"}


def test_param_groups_decay_only_matrices():
    net = _Net()
    decay, no_decay = param_groups(net, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "head.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "conv.bias",
        "embed.weight",
        "head.bias",
        "norm.bias",
        "norm.weight",
        "pos",
    ]


def test_step_sampler_is_fixed_by_seed_and_step():
    a = StepSampler(100, batch_size=8, seed=3)
    b = StepSampler(100, batch_size=8, seed=3)
    assert [a.batch(m) for m in range(30)] == [b.batch(m) for m in range(30)]
    assert a.batch(0) != StepSampler(100, batch_size=8, seed=4).batch(0)
    # One epoch = a permutation: 100 items in batches of 10 cover each index exactly once.
    epoch = [i for m in range(10) for i in StepSampler(100, 10, seed=0).batch(m)]
    assert sorted(epoch) == list(range(100))
    # Later epochs are permuted differently.
    assert StepSampler(100, 10, seed=0).batch(10) != StepSampler(100, 10, seed=0).batch(0)


def test_step_sampler_resumes_without_replaying():
    straight = StepSampler(50, batch_size=7, seed=1)
    stream = iter(straight)
    batches = [next(stream) for _ in range(20)]
    resumed = iter(StepSampler(50, batch_size=7, seed=1, start=12))
    assert [next(resumed) for _ in range(8)] == batches[12:]


def test_step_sampler_shards_by_rank():
    world = [StepSampler(64, batch_size=4, seed=0, rank=r, world=2) for r in range(2)]
    single = StepSampler(64, batch_size=8, seed=0)
    for m in range(8):  # 8 micro-steps x 2 ranks x 4 = one epoch
        r0, r1 = world[0].batch(m), world[1].batch(m)
        assert not set(r0) & set(r1)
        assert r0 + r1 == single.batch(m)  # the same global batch, split between the ranks
