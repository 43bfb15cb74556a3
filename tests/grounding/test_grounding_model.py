"""ConTEXTual Net 3D: text gates, padding mask, frozen language model, baselines, post-processing."""

import numpy as np
import pytest
import torch

from mmtok import hub
from mmtok.errors import InputError
from mmtok.grounding.model import ContextualNet3D, ContextualNetMIP, TextGate, postprocess, text_encoder

TINY = dict(filters=(8, 16, 24), strides=(1, 2, 2), text_levels=(0, 1), patch=(16, 16, 16), spacing_mm=8.0)
A = "Hypermetabolic left axillary node, SUVmax 7.2 (image 98)."
B = "Right lower lobe nodule with SUV max of 3.1 on slice 40."


def _tiny(**kw) -> ContextualNet3D:
    torch.manual_seed(0)
    return ContextualNet3D(**(TINY | kw)).eval()


def _wake_gates(model: ContextualNet3D) -> None:
    """Give the zero-initialised output projections weights, as training would."""
    g = torch.Generator().manual_seed(1)
    for gate in model.gates.values():
        w = gate.attn.out_proj.weight
        w.data = torch.randn(w.shape, generator=g) * 0.5


def test_gates_start_as_identity_and_text_then_changes_the_output():
    model = _tiny()
    image = torch.rand(1, 2, 16, 16, 16)
    ta, ma = model.encode_text([A])
    tb, mb = model.encode_text([B])
    with torch.no_grad():
        plain = _tiny(text_levels=(), text_model=None)
        plain.unet.load_state_dict(model.unet.state_dict())
        ref = plain(image)
        out_a, out_b = model(image, ta, ma), model(image, tb, mb)
    # Zero-initialised gates: exactly the image-only DynUNet whatever the sentence.
    torch.testing.assert_close(out_a, ref)
    torch.testing.assert_close(out_b, ref)
    _wake_gates(model)
    with torch.no_grad():
        out_a, out_b = model(image, ta, ma), model(image, tb, mb)
    assert (out_a - out_b).abs().max() > 1e-3  # the sentence now changes the segmentation


def test_padding_tokens_are_masked():
    gate = TextGate(8, 384)
    torch.nn.init.normal_(gate.attn.out_proj.weight)
    y = torch.rand(1, 8, 4, 4, 4)
    tokens = torch.randn(1, 5, 384)
    mask = torch.ones(1, 5, dtype=torch.bool)
    padded = torch.cat([tokens, 100 * torch.randn(1, 7, 384)], 1)  # junk where the padding is
    pmask = torch.cat([mask, torch.zeros(1, 7, dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(gate(y, tokens, mask), gate(y, padded, pmask))
        assert not torch.allclose(gate(y, tokens, mask), gate(y, padded, torch.ones(1, 12, dtype=torch.bool)))


def test_batch_of_sentences_pads_and_masks():
    emb, mask = text_encoder().encode(
        ["left axillary node", "a much longer sentence about a right hilar node"]
    )
    assert emb.shape[:2] == mask.shape and mask.dtype == torch.bool
    n0 = int(mask[0].sum())
    assert n0 < mask.shape[1] and not mask[0, n0:].any() and mask[1].all()
    assert torch.all(emb[0, n0:] == 0)


def test_numbers_are_stripped_and_embeddings_cached():
    enc = text_encoder()
    e1, _ = enc.encode([A])
    e2, _ = enc.encode(["Hypermetabolic left axillary node, SUVmax 12.9 (image 143)."])
    torch.testing.assert_close(e1, e2)  # the net cannot read the SUV or the slice
    n = len(enc._cache)
    enc.encode([A])
    assert len(enc._cache) == n
    e3, _ = enc.encode(["Hypermetabolic right axillary node, SUVmax 7.2 (image 98)."])
    assert not torch.allclose(e1, e3)  # words still count


def test_frozen_language_model_gets_no_gradient_and_is_not_saved(tmp_path):
    model = _tiny().train()
    _wake_gates(model)
    batch = {
        "image": torch.rand(2, 2, 16, 16, 16),
        "label": (torch.rand(2, 1, 16, 16, 16) > 0.9).to(torch.uint8),
        "text": [A, B],
    }
    loss, logs = model.training_step(batch)
    loss.backward()
    lm = text_encoder().model
    assert all(not p.requires_grad and p.grad is None for p in lm.parameters())
    assert model.gates["0"].attn.in_proj_weight.grad is not None  # the gates do learn
    assert not any("embeddings" in k or "encoder.layer" in k for k in model.state_dict())
    assert 0.0 <= logs["dice"] <= 1.0
    folder = hub.save(model, tmp_path / "m", dtype=torch.bfloat16)
    assert (folder / "model.safetensors").stat().st_size < 1_000_000  # no 22M-parameter LM inside
    again = hub.load(folder)
    assert isinstance(again, ContextualNet3D) and again.text_levels == (0, 1)


def test_one_image_many_sentences_equals_one_by_one():
    model = _tiny()
    _wake_gates(model)
    image = torch.rand(1, 2, 16, 16, 16)
    tokens, mask = model.encode_text([A, B])
    with torch.no_grad():
        both = model(image, tokens, mask)
        one = model(image, *model.encode_text([B]))
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-4)


def test_probabilities_sliding_window_shapes_and_image_only_baseline():
    image = torch.rand(2, 20, 18, 36)  # smaller than a tile on two axes, two tiles on the third
    model = _tiny(patch=(24, 24, 24))
    p = model.probabilities(image, [A, B], overlap=0.5)
    assert p.shape == (2, 20, 18, 36) and float(p.min()) >= 0 and float(p.max()) <= 1
    base = _tiny(text_levels=(), text_model=None, patch=(24, 24, 24))
    q = base.probabilities(image, [A, B])
    assert q.shape == (2, 20, 18, 36) and torch.equal(q[0], q[1])  # it cannot tell sentences apart
    with pytest.raises(InputError):
        _tiny()(image[None, :, :16, :16, :16])  # a text model needs a sentence


def test_mip_baseline_trains_and_back_projects():
    torch.manual_seed(0)
    model = ContextualNetMIP(filters=(8, 16, 24), strides=(1, 2, 2), text_levels=(0,), spacing_mm=8.0)
    label = torch.zeros(1, 1, 16, 16, 24, dtype=torch.uint8)
    label[0, 0, 4:7, 8:10, 10:13] = 1
    loss, _ = model.training_step({"image": torch.rand(1, 2, 16, 16, 24), "label": label, "text": [A]})
    loss.backward()
    p = model.eval().probabilities(torch.rand(2, 20, 18, 30), [A, B])  # sides not divisible by 4
    assert p.shape == (2, 20, 18, 30)


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError):
        ContextualNet3D(**(TINY | {"text_levels": (2,)}))  # only 2 decoder levels
    with pytest.raises(ValueError):
        ContextualNet3D(**(TINY | {"text_model": None}))
    with pytest.raises(InputError):
        text_encoder().encode(["  "])


def test_postprocess_keeps_the_best_component_and_zeros_low_suv():
    prob = np.zeros((20, 20, 20), np.float32)
    suv = np.full(prob.shape, 3.0, np.float32)
    prob[2:6, 2:6, 2:6] = 0.7  # big, less sure
    prob[12:15, 12:15, 12:15] = 0.95  # small, surer: kept
    suv[13, 13, 13] = 0.5  # a cold voxel inside it is removed
    mask = postprocess(prob, suv)
    assert mask[12:15, 12:15, 12:15].sum() == 26 and not mask[2:6, 2:6, 2:6].any()
    assert not mask[13, 13, 13]
    assert not postprocess(np.zeros_like(prob), suv).any()


def test_body_coordinates_follow_the_body_not_the_array():
    from mmtok.grounding.model import with_coordinates

    image = torch.zeros(2, 30, 20, 40)
    image[0, 10:20, 5:15, 8:32] = 0.2  # the body: SUV 2 in a box
    c = with_coordinates(image)
    assert c.shape == (5, 30, 20, 40) and torch.equal(c[:2], image)
    # -1 and +1 at the body's edges on every axis, whatever the margins of the array are
    for ch, (lo, hi) in zip((2, 3, 4), ((10, 19), (5, 14), (8, 31)), strict=True):
        vals = c[ch].movedim(ch - 2, 0)[:, 0, 0]
        assert vals[lo] == pytest.approx(-1) and vals[hi] == pytest.approx(1, abs=0.02)
        assert torch.all(vals.diff() > 0)
    shifted = torch.roll(image, shifts=5, dims=3)  # the same body further along the table
    c2 = with_coordinates(shifted)
    assert torch.allclose(torch.roll(c[4], shifts=5, dims=2)[:, :, 13:], c2[4][:, :, 13:])
    model = _tiny(coordinates=True, patch=(16, 16, 16))
    assert model.unet.input_block.conv1.conv.in_channels == 5
    p = model.probabilities(image[:, :16, :16, :32], [A])  # 2-channel input: coordinates added inside
    assert p.shape == (1, 16, 16, 32)
