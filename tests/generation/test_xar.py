"""xAR: masks, noisy-context training, cached sampling equal to uncached, CFG, seeds, bad input."""

import pytest
import torch

from mmtok.errors import InputError
from mmtok.generation.xar import XAR, _teacher_forcing_mask

KINDS = ["token", "cell", "subsample", "scale", "image"]
PROMPTS = ["a small red circle in the middle", "a large blue square at the top left"]


def _model(entity="cell", condition="text", context="noisy", seed=0):
    torch.manual_seed(seed)
    m = XAR(dim=32, depth=2, heads=2, entity=entity, condition=condition, context=context, text_dim=16,
            text_layers=1, text_length=24, grid=4)  # fmt: skip
    with torch.no_grad():  # zero-initialised gates/outputs would make every test trivially pass
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _cond(m, n=2):
    return PROMPTS[:n] if m.condition == "text" else list(range(n))


@pytest.mark.parametrize("entity", KINDS)
def test_earlier_entities_never_see_later_ones(entity):
    m = _model(entity)
    ents = m.entities
    x = torch.randn(2, ents.seq_len, 16)
    t = torch.rand(2, ents.num_entities)
    ids, pos = ents.entity_ids, torch.arange(ents.seq_len)
    cond = m.encode_condition(PROMPTS)
    out = m._run(x, t, ids, pos, cond, ents.block_causal_mask())
    first = ents.entity_slices()[0]
    x2 = x.clone()
    x2[:, first.stop :] += 1.0  # change everything after the first entity
    out2 = m._run(x2, t, ids, pos, m.encode_condition(PROMPTS), ents.block_causal_mask())
    assert torch.allclose(out[:, first], out2[:, first], atol=1e-5)
    if ents.num_entities > 1:
        assert not torch.allclose(out[:, first.stop :], out2[:, first.stop :], atol=1e-3)


def test_teacher_forcing_mask():
    ids = torch.tensor([0, 0, 1, 1, 2])
    m = _teacher_forcing_mask(ids)
    L = len(ids)
    assert m.shape == (2 * L, 2 * L)
    assert not m[:L, L:].any()  # clean tokens never see noisy ones
    assert torch.equal(m[:L, :L], ids[:, None] >= ids[None, :])  # clean: block-causal
    assert torch.equal(m[L:, :L], ids[:, None] > ids[None, :])  # noisy e sees clean < e only
    assert torch.equal(m[L:, L:], ids[:, None] == ids[None, :])  # and itself


@pytest.mark.parametrize("entity", KINDS)
@pytest.mark.parametrize("condition", ["text", "class"])
def test_kv_cache_gives_the_same_samples_as_recomputing(entity, condition):
    m = _model(entity, condition)
    g = lambda: torch.Generator().manual_seed(7)
    a = m.sample(_cond(m), steps=3, cfg=2.5, generator=g())
    b = m.sample(_cond(m), steps=3, cfg=2.5, generator=g(), kv_cache=False)
    assert a.shape == (2, 16, 4, 4) and torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())


def test_sampling_is_fixed_by_the_seed_and_cfg_matters():
    m = _model()
    g = lambda s: torch.Generator().manual_seed(s)
    a = m.sample(PROMPTS, steps=4, generator=g(1))
    assert torch.equal(a, m.sample(PROMPTS, steps=4, generator=g(1)))
    assert not torch.allclose(a, m.sample(PROMPTS, steps=4, generator=g(2)))
    assert not torch.allclose(a, m.sample(PROMPTS, steps=4, cfg=1.0, generator=g(1)))
    const = m.sample(PROMPTS, steps=4, cfg_schedule="constant", generator=g(1))
    assert not torch.allclose(a, const)  # linear ramp differs from constant after the first entity
    ode = m.sample(PROMPTS, steps=4, sampler="euler", generator=g(1))
    assert torch.equal(ode, m.sample(PROMPTS, steps=4, sampler="euler", generator=g(1)))


def test_without_the_pooled_vector_text_enters_only_through_cross_attention():
    m = _model()
    m.pooled_text = False
    c = m.encode_condition(PROMPTS)
    assert torch.equal(c.vec, torch.zeros_like(c.vec)) and c.tokens.abs().sum() > 0
    g = lambda s: torch.Generator().manual_seed(s)
    # The prompt still steers the samples (through the tokens), and the pooled path was not used.
    a = m.sample(PROMPTS, steps=2, cfg=1.0, generator=g(0))
    b = m.sample(PROMPTS[::-1], steps=2, cfg=1.0, generator=g(0))
    assert not torch.allclose(a, b)  # same noise per batch position, other prompts
    for blk in m.blocks:
        blk.cross = None  # cut cross-attention: the prompt no longer matters at all
    a = m.sample(PROMPTS, steps=2, cfg=1.0, generator=g(0))
    assert torch.equal(a, m.sample(PROMPTS[::-1], steps=2, cfg=1.0, generator=g(0)))
    assert (
        XAR(dim=32, depth=1, heads=2, text_dim=16, text_layers=1, grid=4, pooled_text=False).pooled_text
        is False
    )


def test_frozen_text_encoder_gets_no_gradient_and_the_rest_trains():
    torch.manual_seed(0)
    m = XAR(dim=32, depth=1, heads=2, text_dim=16, text_layers=1, text_length=24, grid=4, freeze_text=True)
    assert m.config["freeze_text"] is True
    assert not any(p.requires_grad for p in m.text.parameters())
    text = {k: v.clone() for k, v in m.text.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    before = m.proj_out.weight.clone()  # zero at init, so the only layer a first step must move
    loss, _ = m.train().training_step({"latent": torch.randn(2, 16, 4, 4), "caption": PROMPTS})
    loss.backward()
    opt.step()
    assert all(torch.equal(v, m.text.state_dict()[k]) for k, v in text.items())
    assert not torch.equal(before, m.proj_out.weight)


@pytest.mark.parametrize("context", ["noisy", "clean"])
def test_training_step_learns(context):
    m = _model(context=context).train()
    m.label_drop = 0.0
    batch = {"latent": torch.randn(4, 16, 4, 4), "caption": PROMPTS * 2}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    torch.manual_seed(0)
    losses = []
    for _ in range(60):
        loss, logs = m.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(logs) == {"mse"}
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10, losses


def test_bad_inputs_are_one_line_errors():
    m = _model(condition="class")
    with pytest.raises(InputError, match="class labels"):
        m.sample([10], steps=2)
    with pytest.raises(InputError, match="sampler"):
        m.sample([1], steps=2, sampler="heun")
    with pytest.raises(InputError, match="steps"):
        m.sample([1], steps=0)
    with pytest.raises(InputError, match="prompt"):
        _model().sample("a red circle", steps=2)
