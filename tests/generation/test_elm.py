"""ELM: sub-token decomposition, causal training, KV-cache decoding == recomputation, CFG schedules,
filters, and serving through the generation pipeline."""

import math

import pytest
import torch

import mmtok
from mmtok.errors import InputError
from mmtok.generation.elm import ELM, cfg_scale, filter_logits
from mmtok.generation.pipeline import GenerationPipeline


def _model(**kw) -> ELM:
    torch.manual_seed(0)
    args = dict(bits=8, sub_tokens=2, grid=4, dim=32, depth=2, heads=2, condition="class")
    return ELM(**(args | kw)).eval()


def test_sequence_round_trip_any_order():
    codes = torch.randint(0, 256, (3, 4, 4))
    for order in ("token", "cell", "subsample"):
        m = _model(order=order)
        seq = m.to_sequence(codes)
        assert seq.shape == (3, 16, 2) and int(seq.max()) < 16
        assert torch.equal(m.to_codes(seq), codes)
    with pytest.raises(ValueError, match="area-averaged"):
        _model(order="scale")


def test_causal_training_never_sees_the_future():
    m = _model()
    codes = torch.randint(0, 256, (2, 4, 4))
    cond = m.encode_condition([1, 2])
    L = m.seq_len
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    seq = m.to_sequence(codes)
    h1 = m.hidden(m.inputs(cond, seq[:, :-1]), torch.arange(L), cond, causal)
    seq2 = seq.clone()
    seq2[:, 9:] = (seq2[:, 9:] + 1) % 16  # change positions 9.. of the codes
    h2 = m.hidden(m.inputs(cond, seq2[:, :-1]), torch.arange(L), cond, causal)
    # Input i is code i-1: outputs 0..9 read only codes 0..8 and must not change.
    assert torch.allclose(h1[:, :10], h2[:, :10], atol=1e-6) and not torch.allclose(h1[:, 10:], h2[:, 10:])


def test_training_step_learns():
    m = _model(condition="text", text_length=16).train()
    m.label_drop = 0.0
    batch = {"codes": torch.randint(0, 256, (4, 4, 4)), "caption": ["a red circle", "a blue star"] * 2}
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, logs = m.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert {"ce", "bits_per_position", "token_acc"} <= set(logs)
    assert losses[0] == pytest.approx(math.log(16), rel=0.15)  # uniform over 2^4 per sub-token at start
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


@pytest.mark.parametrize("condition", ["class", "text"])
def test_kv_cache_decoding_equals_recomputing_the_prefix(condition):
    m = _model(condition=condition, text_length=16).double()
    cond = [1, 2] if condition == "class" else ["a red circle", "a big blue star"]
    greedy = m.sample(cond, temperature=0, cfg=2.0)
    assert torch.equal(greedy, m.sample(cond, temperature=0, cfg=2.0, kv_cache=False))
    a = m.sample(cond, top_k=20, top_p=0.9, cfg=1.5, generator=torch.Generator().manual_seed(3))
    b = m.sample(
        cond, top_k=20, top_p=0.9, cfg=1.5, generator=torch.Generator().manual_seed(3), kv_cache=False
    )
    assert torch.equal(a, b) and a.shape == (2, 4, 4)
    c = m.sample(cond, top_k=20, top_p=0.9, cfg=1.5, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)


def test_cfg_schedules_and_filters():
    assert cfg_scale("constant", 4.0, 0, 10) == 4.0
    assert cfg_scale("linear", 4.0, 0, 10) == 1.0 and cfg_scale("linear", 4.0, 9, 10) == 4.0
    assert cfg_scale("cosine", 4.0, 0, 11) == 1.0 and cfg_scale("cosine", 4.0, 5, 11) == pytest.approx(2.5)
    assert cfg_scale("cosine", 4.0, 2, 11) < cfg_scale("linear", 4.0, 2, 11)  # slow start
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(filter_logits(logits, 1.0, 2, 1.0)[0, 2:]).all()
    p = logits.softmax(-1)[0]  # 0.64, 0.23, 0.09, ...: top-p 0.8 keeps the first two
    kept = torch.isfinite(filter_logits(logits, 1.0, 0, 0.8)[0])
    assert kept.tolist() == [True, True, False, False, False] and float(p[:1].sum()) < 0.8
    assert torch.isfinite(filter_logits(logits, 1.0, 0, 0.01)[0]).sum() == 1  # the best always stays


def test_bad_inputs_are_one_line_errors():
    m = _model()
    for kwargs in (
        {"cfg": -1.0},
        {"temperature": -0.5},
        {"top_p": 0.0},
        {"top_k": -3},
        {"cfg_schedule": "cubic"},
    ):
        with pytest.raises(InputError):
            m.sample([1], **kwargs)
    with pytest.raises(InputError, match="class labels"):
        m.sample([10])
    with pytest.raises(InputError, match="list"):
        m.sample("seven")


def test_pipeline_serves_elm_through_the_binary_tokenizer(tmp_path):
    m = ELM(bits=32, sub_tokens=4, grid=8, dim=32, depth=1, heads=2, condition="class")  # bin-f8-64's
    folder = mmtok.save(m, tmp_path / "elm")
    pipe = GenerationPipeline(folder)
    seen = []
    result = pipe(class_label=3, n=2, seed=0, progress=lambda d, t: seen.append((d, t)))
    assert len(result.images) == 2 and result.images[0].shape == (3, 64, 64)
    assert seen[-1] == (64, 64) and len(seen) == 64  # one tick per position
    again = pipe(class_label=3, n=2, seed=0)
    assert torch.equal(result.images[0], again.images[0])


def test_pipeline_refuses_a_generator_whose_code_width_its_tokenizer_does_not_make(tmp_path):
    # A 16-bit ELM (trained before bin-f8-64 was widened to 32 bits) would decode into noise.
    m = ELM(bits=16, sub_tokens=2, grid=8, dim=32, depth=1, heads=2, condition="class")
    with pytest.raises(InputError, match="16-bit codes but its tokenizer bin-f8-64 makes 32-bit"):
        GenerationPipeline(mmtok.save(m, tmp_path / "elm16"))
