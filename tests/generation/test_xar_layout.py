"""xAR's layout prompt encoder (``text_encoder="slots"``) and patched latents (``patch=2``)."""

import pytest
import torch

from mmtok.generation.xar import XAR, _slot_overlap
from mmtok.tokenizers.entities import make_entities

PROMPTS = ["a small red circle in the middle", "a large blue square at the top left"]


def _batch(n=2):
    from mmtok.data.shapes import ShapesDataset

    ds = ShapesDataset("train", size=n, render=False)
    items = [ds[i] for i in range(n)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("shape", "colour", "size")}
    return {**batch, "caption": [it["caption"] for it in items], "latent": torch.randn(n, 16, 8, 8)}


def _model(entity="cell", patch=2, seed=0, train_layout="labels"):
    torch.manual_seed(seed)
    m = XAR(dim=32, depth=2, heads=2, entity=entity, text_encoder="slots", patch=patch, grid=8,
            train_layout=train_layout,
            text_length=24, parser={"dim": 32, "heads": 2, "embed_dim": 16, "layers": 1})  # fmt: skip
    with torch.no_grad():  # zero-initialised gates/outputs would make every test trivially pass
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def test_slot_overlap_is_the_area_share_of_each_slot():
    w = _slot_overlap(make_entities("token", (4, 4)), 9)  # 4 x 4 tokens over a 3 x 3 slot grid
    assert w.shape == (16, 9)
    assert torch.allclose(w.sum(1), torch.ones(16))
    # token (0, 0) covers [0, 1/4)^2: entirely inside the top-left slot
    assert w[0, 0] == 1 and w[0, 1:].sum() == 0
    # token (0, 1) covers x in [1/4, 1/2): 1/3 of it in the left column, 2/3 in the middle one
    assert torch.allclose(w[1, :3], torch.tensor([1 / 3, 2 / 3, 0.0], dtype=w.dtype))
    # scale entities: coarse tokens get the area average (the single 1 x 1 token sees all slots equally)
    ws = _slot_overlap(make_entities("scale", (4, 4)), 9)
    assert torch.allclose(ws[0], torch.full((9,), 1 / 9))
    with pytest.raises(ValueError, match="square"):
        _slot_overlap(make_entities("token", (4, 4)), 8)


@pytest.mark.parametrize("train_layout", ["labels", "parser"])
def test_the_parser_is_frozen_and_the_generator_trains(train_layout):
    m = _model(train_layout=train_layout).train()
    assert not any(p.requires_grad for p in m.text.parameters())
    parser = {k: v.clone() for k, v in m.text.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    before = m.slot_embed["colour"].weight.clone()
    loss, _ = m.training_step(_batch())
    loss.backward()
    opt.step()
    assert all(torch.equal(v, m.text.state_dict()[k]) for k, v in parser.items())
    assert not torch.equal(before, m.slot_embed["colour"].weight)


def test_training_reads_the_scene_layout_and_sampling_reads_the_parser():
    """``train_layout="labels"``: the slot features in training are the scene's own labels, one-hot
    (so a half-trained parser never teaches the generator its mistakes); prompts go through the parser."""
    m = _model()
    m.label_drop = 0.0
    batch = _batch(3)
    cond = m.dropped_condition(batch, 3)
    for key, table in m.slot_embed.items():
        one_hot = torch.nn.functional.one_hot(batch[key], table.in_features).float()
        assert torch.allclose(table(one_hot)[0], cond.layout[0] - m.slot_pos - sum(
            t(torch.nn.functional.one_hot(batch[k], t.in_features).float())[0]
            for k, t in m.slot_embed.items() if k != key), atol=1e-5)  # fmt: skip
    parsed = m.encode_condition(batch["caption"])  # grammar captions: read exactly, as in training
    assert torch.allclose(parsed.layout, cond.layout, atol=1e-6) and torch.allclose(parsed.vec, cond.vec)
    m.text.grammar = False
    parsed = m.encode_condition(batch["caption"])
    assert not torch.allclose(parsed.layout, cond.layout, atol=1e-3)  # the untrained network differs
    assert m.text.training is False  # encode_condition keeps the frozen parser in eval mode
    with pytest.raises(ValueError, match="train_layout"):
        XAR(dim=32, depth=1, heads=2, grid=8, text_encoder="slots", train_layout="both")


def test_a_slot_feature_reaches_only_the_tokens_that_cover_it():
    """With cross-attention and the pooled vector cut, a slot's feature enters only through the tokens
    that cover it: changing the bottom-right slot's feature leaves the top-left cell unchanged."""
    m = _model(entity="cell")
    for blk in m.blocks:
        blk.cross = None
    cond = m.encode_condition(PROMPTS)
    ents = m.entities
    x, t = torch.randn(2, ents.seq_len, m.token_channels), torch.rand(2, ents.num_entities)
    ids, pos = ents.entity_ids, torch.arange(ents.seq_len)
    first = ents.entity_slices()[0]  # the top-left 2 x 2 tokens: the top-left slot and its neighbours
    cond.vec = torch.zeros_like(cond.vec)
    out = m._run(x, t, ids, pos, cond, ents.block_causal_mask())
    cond2 = m.encode_condition(PROMPTS)
    cond2.vec = torch.zeros_like(cond2.vec)
    cond2.layout = cond2.layout.clone()
    cond2.layout[:, 8] += 1.0  # the bottom-right slot
    out2 = m._run(x, t, ids, pos, cond2, ents.block_causal_mask())
    assert torch.allclose(out[:, first], out2[:, first], atol=1e-6)
    assert not torch.allclose(out[:, first.stop :], out2[:, first.stop :], atol=1e-4)


@pytest.mark.parametrize("entity", ["cell", "scale", "token"])
def test_patched_layout_model_samples_with_and_without_the_cache(entity):
    m = _model(entity)
    g = lambda: torch.Generator().manual_seed(3)
    a = m.sample(PROMPTS, steps=2, cfg=2.0, generator=g())
    b = m.sample(PROMPTS, steps=2, cfg=2.0, generator=g(), kv_cache=False)
    assert a.shape == (2, 16, 8, 8)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, m.sample(PROMPTS[::-1], steps=2, cfg=2.0, generator=g()), atol=1e-3)


def test_patchify_round_trips_the_latent():
    m = _model(patch=2)
    z = torch.randn(3, 16, 8, 8)
    tokens = m._patchify(z)
    assert tokens.shape == (3, 64, 4, 4)
    assert torch.equal(m._unpatchify(tokens), z)
    with pytest.raises(ValueError, match="patch"):
        XAR(dim=32, depth=1, heads=2, grid=8, patch=3)


def test_the_null_prompt_is_its_own_condition():
    m = _model()
    c = m.encode_condition(["", PROMPTS[0]])
    assert torch.equal(c.layout[0], m.null_slots)
    assert torch.equal(c.vec[0], m.null_vec)
    assert not torch.equal(c.layout[1], m.null_slots)
