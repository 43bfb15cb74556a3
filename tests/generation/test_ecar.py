"""ECAR: the multistage coupling (noise statistics, stage ends), training, KV cache, evaluations per
image, and serving through the generation pipeline."""

import pytest
import torch
import torch.nn.functional as F

import mmtok
from mmtok.errors import InputError
from mmtok.generation.ecar import ECAR, detail_noise, up
from mmtok.generation.pipeline import GenerationPipeline
from mmtok.tokenizers.entities import downsample


def _model(**kw) -> ECAR:
    torch.manual_seed(0)
    args = dict(latent_channels=4, grid=8, stages=(2, 4, 8), dim=32, depth=2, heads=2, condition="class")
    return ECAR(**(args | kw)).eval()


def _wake(m):
    with torch.no_grad():  # the output layers start at zero: give them weights, as training would
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return m


def test_detail_noise_makes_the_next_stage_noise_iid():
    z = detail_noise((40000, 1, 4, 4), 2, torch.Generator().manual_seed(0))
    assert F.avg_pool2d(z, 2).abs().max() < 1e-5 and z.var().item() == pytest.approx(0.75, abs=0.02)
    eps = up(torch.randn(40000, 1, 2, 2), 2) / 2 + z
    cov = torch.cov(eps.flatten(1).T)
    assert torch.allclose(cov, torch.eye(16), atol=0.04)


def test_stage_pairs_chain_and_end_on_the_data():
    m = _model()
    latent = torch.randn(5, 4, 8, 8)
    torch.manual_seed(1)
    pairs = m.pairs(latent)
    assert [p[0].shape[-1] for p in pairs] == [2, 4, 8]
    assert torch.allclose(pairs[-1][1], latent, atol=1e-6)  # T_S = 0: the last stage ends on x0
    for s in (1, 2):  # a stage starts from the previous end, upsampled, plus block-mean-zero noise
        detail = pairs[s][0] - up(pairs[s - 1][1], 2)
        assert F.avg_pool2d(detail, 2).abs().max() < 1e-5 and detail.abs().max() > 0.01
    # stage 1's end is (1 - T_1) x0_1 + T_1 eps_1 with eps_1 its start (pure noise)
    start, end = pairs[0]
    assert torch.allclose(end, (1 - 0.75) * downsample(latent, (2, 2)) + 0.75 * start, atol=1e-6)


def test_training_step_learns():
    m = _model().train()
    m.label_drop = 0.0
    batch = {"latent": torch.randn(4, 4, 8, 8), "label": torch.tensor([0, 1, 2, 3])}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss, _ = m.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


@pytest.mark.parametrize("condition", ["class", "text"])
def test_kv_cache_equals_recomputing_and_seed_fixes_samples(condition):
    m = _wake(_model(condition=condition, text_length=16))
    cond = [1, 2] if condition == "class" else ["a red circle", "a blue star"]
    a = m.sample(cond, steps=3, cfg=2.0, generator=torch.Generator().manual_seed(0))
    b = m.sample(cond, steps=3, cfg=2.0, generator=torch.Generator().manual_seed(0), kv_cache=False)
    c = m.sample(cond, steps=3, cfg=2.0, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 4, 8, 8) and torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, c)
    assert m.network_evaluations(6) == 18


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="integer factors"):
        _model(stages=(3, 8))
    with pytest.raises(ValueError, match="decreasing"):
        _model(stage_times=(0.3, 0.6))
    with pytest.raises(InputError, match="Euler"):
        _model().sample([1], sampler="euler_maruyama")


def test_pipeline_serves_ecar_with_its_euler_sampler(tmp_path):
    m = ECAR(dim=32, depth=1, heads=2, condition="class")
    pipe = GenerationPipeline(mmtok.save(m, tmp_path / "ecar"))
    result = pipe(class_label=1, n=2, steps=2, seed=0)
    assert len(result.images) == 2 and result.settings["sampler"] == "euler"
    loaded = mmtok.load(tmp_path / "ecar")
    assert isinstance(loaded, ECAR) and loaded.stages == (2, 4, 8) and loaded.bounds == (1.0, 0.75, 0.4, 0.0)
