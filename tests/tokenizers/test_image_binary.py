import pytest
import torch

import mmtok
from mmtok.data import build_dataset
from mmtok.errors import InputError
from mmtok.tokenizers.image_binary import (
    BinaryTokenizer,
    bits_to_codes,
    codes_to_bits,
    logit_consistency,
    merge_codes,
    perceptual_distance,
    pixel_weights,
    split_codes,
)


def _tiny(levels=3, bits=8, **kw):
    return BinaryTokenizer(bits=bits, block_out_channels=[8, 16, 16, 16][:levels], norm_num_groups=4, **kw)


def _fit(tok, x, key, steps=30):
    """``steps`` Adam steps of ``tok.training_step`` on ``x``: (the first ``logs[key]``, the last logs)."""
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(steps):
        loss, logs = tok.training_step({"image": x})
        first = first if first is not None else logs[key].item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, logs


@pytest.mark.parametrize("levels, f", [(3, 4), (4, 8)])
def test_codes_shape_range_and_decode(levels, f):
    torch.manual_seed(0)
    tok = _tiny(levels, bits=10, sub_tokens=2).eval()
    x = torch.rand(3, 3, 32, 8 * f) * 2 - 1
    with torch.no_grad():
        codes = tok.encode(x)
        assert codes.dtype == torch.long and codes.shape == (3, 32 // f, 8) == (
            3,
            *tok.latent_shape((32, 8 * f)),
        )
        assert codes.min() >= 0 and codes.max() < 2**10 == tok.vocab_size
        y = tok.decode(codes)
        assert y.shape == x.shape and y.abs().max() <= 1
        # decode accepts the sub-token form; forward is decode(encode(x))
        torch.testing.assert_close(tok.decode(tok.split_codes(codes)), y)
        torch.testing.assert_close(tok(x), y)


def test_split_merge_and_bits_round_trips():
    codes = torch.randint(0, 2**16, (2, 8, 8))
    parts = split_codes(codes, 16, 2)
    assert parts.shape == (2, 8, 8, 2) and parts.max() < 256
    # most significant group first
    torch.testing.assert_close(parts[..., 0], codes >> 8)
    torch.testing.assert_close(merge_codes(parts, 16), codes)
    four = split_codes(codes, 16, 4)
    assert four.max() < 16
    torch.testing.assert_close(merge_codes(four, 16), codes)
    bits = codes_to_bits(codes, 16)
    assert bits.shape == (2, 8, 8, 16) and set(bits.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(bits_to_codes(bits), codes)
    assert codes_to_bits(torch.tensor(5), 4).tolist() == [0, 1, 0, 1]
    tok = _tiny(bits=12, sub_tokens=3)
    torch.testing.assert_close(tok.codes_from_bits(tok.bits(codes % 4096)), codes % 4096)
    torch.testing.assert_close(tok.merge_codes(tok.split_codes(codes % 4096)), codes % 4096)
    with pytest.raises(InputError):
        split_codes(codes, 16, 3)
    with pytest.raises(InputError):
        merge_codes(torch.full((1, 2), 300), 16)


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    tok = _tiny()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for stochastic in (True, False):
        tok.zero_grad()
        logits = tok.logits(x)
        bits = tok.binarize(logits, stochastic=stochastic)
        assert set(bits.detach().unique().tolist()) <= {0.0, 1.0}  # hard forward
        tok.decode_bits(bits).sum().backward()
        grad = tok.encoder.conv_in.weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_bit_usage_on_known_codes():
    tok = _tiny(bits=4, sub_tokens=2)
    # bit 0 (MSB) always 1, bit 3 (LSB) alternating, bits 1-2 always 0
    codes = torch.tensor([8, 9] * 50).reshape(10, 5, 2)
    usage = tok.bit_usage(codes)
    torch.testing.assert_close(usage["mean"], torch.tensor([1.0, 0.0, 0.0, 0.5]))
    torch.testing.assert_close(usage["entropy"], torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    assert usage["dead_bits"] == [0, 1, 2] and usage["positions"] == 100
    assert usage["mean_entropy"] == pytest.approx(0.25, abs=1e-5)
    # sub-token 0 is always 0b10, sub-token 1 is 0b00 or 0b01 half the time each
    assert usage["subtoken_perplexity"] == pytest.approx([1.0, 2.0])
    with pytest.raises(InputError):
        tok.bit_usage(torch.tensor([16]))


def test_bit_usage_on_a_dataset():
    tok = _tiny(bits=6).eval()
    data = build_dataset("shapes", "test", resolution=32, size=10)
    usage = tok.bit_usage(data, batch_size=4)
    assert usage["positions"] == 10 * 8 * 8 and usage["mean"].shape == (6,)


def test_training_steps_reduce_reconstruction_loss():
    torch.manual_seed(0)
    tok = _tiny(bits=8)
    data = build_dataset("shapes", "train", resolution=32, size=8)
    batch = torch.utils.data.default_collate([data[i] for i in range(8)])
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, logs = tok.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["l1"].item())
        assert {"bit_entropy", "bit_usage", "dead_bits", "psnr"} <= set(logs)
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0]
    metrics = tok.evaluate(torch.utils.data.Subset(data, range(8)), "cpu")
    assert {"psnr", "ssim", "dead_bits", "bit_entropy_mean", "subtoken0_perplexity"} <= set(metrics)


def test_decoder_only_fine_tuning_keeps_every_code_and_improves_reconstruction():
    torch.manual_seed(0)
    tok = _tiny(bits=8)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    ft = _tiny(bits=8, pixel_loss="l2", train_encoder=False)
    ft.load_state_dict(tok.state_dict())
    with torch.no_grad():
        codes_before, loss_before = ft.encode(x), ft.training_step({"image": x})[0].item()
    frozen = {n: p.detach().clone() for n, p in ft.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("encoder.") for n in frozen)
    opt = torch.optim.Adam([p for p in ft.parameters() if p.requires_grad], lr=3e-3)
    ft.train()
    for _ in range(60):
        loss, logs = ft.training_step({"image": x})
        assert set(logs) == {"l1", "psnr"}  # no entropy term: the bits are fixed
        opt.zero_grad()
        loss.backward()
        opt.step()
    ft.eval()
    with torch.no_grad():
        assert torch.equal(ft.encode(x), codes_before)
        assert ft.training_step({"image": x})[0].item() < 0.5 * loss_before
    for n, p in ft.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_edge_weights_put_the_loss_on_outlines():
    # A flat image with one 4 x 4 square: the weights are mean 1, flat where the image is flat, and
    # largest on the square's outline.
    # (Sobel reads the outline and the pixel on either side of it.)
    x = torch.full((1, 3, 32, 32), -1.0)
    x[:, :, 10:14, 10:14] = 1.0
    w = pixel_weights(x, 8.0)
    assert w.shape == (1, 1, 32, 32)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    flat = w[0, 0, 0, 0]
    assert torch.allclose(w[0, 0, :6], flat) and torch.allclose(w[0, 0, 20:], flat)
    rim = torch.zeros(32, 32, dtype=torch.bool)
    rim[9:15, 9:15] = True
    rim[11:13, 11:13] = False  # the square's inside is flat again
    assert w[0, 0][rim].min() > 5 * flat and torch.allclose(w[0, 0, 11:13, 11:13], flat)
    torch.testing.assert_close(pixel_weights(x, 0.0), torch.ones(1, 1, 32, 32))
    # The weighted loss is the plain one for a flat target, and differs on the square.
    torch.manual_seed(0)
    plain, edged = _tiny(bits=8, pixel_loss="l2"), _tiny(bits=8, pixel_loss="l2", edge_weight=8.0)
    edged.load_state_dict(plain.state_dict())
    flat_batch = {"image": torch.zeros(2, 3, 16, 16)}
    torch.testing.assert_close(plain.training_step(flat_batch)[0], edged.training_step(flat_batch)[0])
    square = {"image": x[:, :, :16, :16].expand(2, -1, -1, -1).contiguous()}
    assert not torch.allclose(plain.training_step(square)[0], edged.training_step(square)[0])
    with pytest.raises(ValueError, match="edge_weight"):
        _tiny(edge_weight=-1.0)


def test_perceptual_distance_is_zero_on_the_target_and_grows_with_the_error():
    from mmtok.eval.judge import ShapesJudge

    torch.manual_seed(0)
    net = ShapesJudge(widths=(8, 16), hidden=16, resolution=32).eval().requires_grad_(False)
    maps = net.feature_maps(torch.zeros(2, 3, 32, 32))
    assert [m.shape[-1] for m in maps] == [16, 16, 8]  # stem, then one map per block
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(perceptual_distance(net, y, y), torch.zeros(2), atol=1e-6, rtol=0)
    noise = torch.randn_like(y)
    small = perceptual_distance(net, y + 0.05 * noise, y)
    large = perceptual_distance(net, y + 0.5 * noise, y)
    assert small.shape == (2,) and (small > 0).all() and (large > small).all()
    x = (y + 0.3 * noise).requires_grad_()
    perceptual_distance(net, x, y).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_perceptual_term_trains_the_decoder_and_is_never_saved(weights_dir):
    from mmtok.errors import MmtokError
    from mmtok.eval.judge import ShapesPerceptual, evaluate_judges

    torch.manual_seed(0)
    mmtok.hub.save(ShapesPerceptual(widths=(8, 16), hidden=16, resolution=16), weights_dir / "percept-tiny")
    # A perceptual network is no judge: `mmtok eval judge` leaves it out.
    assert {m["name"]: m["task"] for m in mmtok.list_models()} == {"percept-tiny": "perceptual"}
    with pytest.raises(MmtokError, match="no judges"):
        evaluate_judges(progress=False)
    base = _tiny(bits=8)
    tok = _tiny(
        bits=8, pixel_loss="l2", train_encoder=False, perceptual="percept-tiny", perceptual_weight=1.0
    )
    tok.load_state_dict(base.state_dict())
    assert tok.state_dict().keys() == base.state_dict().keys()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    first, logs = _fit(tok, x, "perceptual")
    assert set(logs) == {"l1", "psnr", "perceptual"}
    assert logs["perceptual"].item() < 0.7 * first
    assert tok.state_dict().keys() == base.state_dict().keys()  # the network is not a submodule
    # The term adds exactly perceptual_weight * distance to the plain loss.
    plain = _tiny(bits=8, pixel_loss="l2", train_encoder=False)
    plain.load_state_dict(tok.state_dict())
    with torch.no_grad():
        loss, logs = tok.training_step({"image": x})
        torch.testing.assert_close(loss, plain.training_step({"image": x})[0] + logs["perceptual"])
    mmtok.hub.save(tok, weights_dir / "bin-percept-tiny")
    assert mmtok.load("bin-percept-tiny").state_dict().keys() == base.state_dict().keys()
    for bad in (
        {"perceptual": "percept-tiny"},
        {"perceptual_weight": 1.0},
        {"perceptual": "x", "perceptual_weight": -1.0},
    ):
        with pytest.raises(ValueError, match="perceptual"):
            _tiny(**bad)


def test_logit_consistency_is_zero_on_the_target_and_reaches_the_images():
    from mmtok.eval.judge import ShapesJudge

    torch.manual_seed(0)
    net = ShapesJudge(widths=(8, 16), hidden=16, resolution=32).eval().requires_grad_(False)
    y = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(logit_consistency(net, y, y), torch.zeros(3), atol=1e-6, rtol=0)
    x = (y + 0.5 * torch.randn_like(y)).requires_grad_()
    kl = logit_consistency(net, x, y)
    # By hand: KL(p_y || p_x) of each head's softmax, summed over heads and slots.
    px, py = net(x), net(y)
    manual = sum(
        (py[k].softmax(-1) * (py[k].log_softmax(-1) - px[k].log_softmax(-1))).sum(-1).sum(-1) for k in px
    )
    torch.testing.assert_close(kl, manual, atol=1e-5, rtol=1e-4)
    shape_only = (py["shape"].softmax(-1) * (py["shape"].log_softmax(-1) - px["shape"].log_softmax(-1))).sum(
        (1, 2)
    )
    torch.testing.assert_close(
        logit_consistency(net, x, y, heads=("shape",)), shape_only, atol=1e-5, rtol=1e-4
    )
    assert kl.shape == (3,) and (kl > 0).all()
    kl.sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in net.parameters())


def test_consistency_term_counts_only_the_named_sources(weights_dir):
    from mmtok.eval.judge import ShapesPerceptual

    torch.manual_seed(0)
    mmtok.hub.save(ShapesPerceptual(widths=(8, 16), hidden=16, resolution=16), weights_dir / "percept-tiny")
    kw = dict(bits=8, pixel_loss="l2", train_encoder=False, perceptual="percept-tiny", perceptual_weight=1.0)
    tok = _tiny(consistency_weight=2.0, **kw)
    plain = _tiny(**kw)
    plain.load_state_dict(tok.state_dict())
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    net = tok._perceptual_net("percept-tiny", x.device)
    with torch.no_grad():
        recon = tok.decode_bits((tok.logits(x) > 0).float()).float()  # unclamped, as training sees it
        per_image = logit_consistency(net, recon, x)
        sources = ["shapes", "photos", "shapes", "digits"]
        loss, logs = tok.training_step({"image": x, "source": sources})
        # Only the two shapes images count, each as one image of the batch of four.
        torch.testing.assert_close(logs["consistency"], (per_image[0] + per_image[2]) / 4)
        torch.testing.assert_close(loss, plain.training_step({"image": x})[0] + 2.0 * logs["consistency"])
        # Without sources every image counts; with none of the named sources, none does.
        assert torch.isclose(tok.training_step({"image": x})[1]["consistency"], per_image.mean())
        assert tok.training_step({"image": x, "source": ["photos"] * 4})[1]["consistency"] == 0
    # A few decoder steps lower it.
    first, logs = _fit(tok, x, "consistency")
    assert logs["consistency"].item() < 0.7 * first
    for bad in ({"consistency_weight": 1.0}, {"consistency_weight": -1.0, **kw}):
        with pytest.raises(ValueError, match="consistency_weight"):
            _tiny(**{"bits": 8, **bad})


def test_widening_keeps_the_old_bits_and_the_reconstructions():
    torch.manual_seed(0)
    small, wide = _tiny(bits=8, sub_tokens=2), _tiny(bits=12, sub_tokens=3)
    wide.load_init_state_dict(small.state_dict())
    small.eval(), wide.eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(wide(x), small(x))  # the new bits' decoder weights are zero
        # The old bits lead each code (most significant first), the new ones follow.
        torch.testing.assert_close(wide.encode(x) >> 4, small.encode(x))
    assert wide.decoder.conv_in.weight[:, 8:].abs().sum() == 0
    assert wide.encoder.conv_out.weight[8:].abs().sum() > 0  # new bits read the image from step 0
    # Same bits: plain load_state_dict; fewer bits or other layers: refused.
    same = _tiny(bits=8)
    same.load_init_state_dict(small.state_dict())
    torch.testing.assert_close(same.decoder.conv_in.weight, small.decoder.conv_in.weight)
    with pytest.raises(RuntimeError):
        _tiny(bits=4, sub_tokens=2).load_init_state_dict(small.state_dict())
    with pytest.raises(RuntimeError):
        _tiny(levels=4, bits=12, sub_tokens=3).load_init_state_dict(small.state_dict())


@pytest.mark.parametrize(
    "bits, path",
    [(24, "experiments/configs/bin-f8-64-b24.yaml"), (32, "configs/bin-f8-64/bin-f8-64-b32.yaml")],
)
def test_widened_stage_configs_start_from_a_16_bit_tokenizer(bits, path, weights_dir):
    # `mmtok train` builds the model through BinaryTokenizer.load_init_state_dict (model.init). The
    # widening configs started from stage 4 (16 bits, git history); a 16-bit tokenizer of the same
    # layers stands in for it here, so the config's own kwargs are what gets widened.
    from mmtok.train.config import load_config
    from mmtok.train.trainer import _build_model

    cfg = load_config(path)
    kwargs = dict(cfg.model.kwargs, bits=16, sub_tokens=2)
    torch.manual_seed(0)
    source = BinaryTokenizer(**kwargs).eval()
    mmtok.hub.save(source, weights_dir / "bin-stage4")
    cfg.model.init = "bin-stage4"
    wide = _build_model(cfg).eval()
    assert wide.num_bits == bits and wide.sub_vocab_size == 256
    x = torch.stack([build_dataset("shapes", "heldout", resolution=64, seed=0)[i]["image"] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(wide.float()(x), source.float()(x))
        assert torch.equal(wide.encode(x) >> (bits - 16), source.encode(x))


def test_bad_inputs_raise_input_error(weights_dir):
    tok = _tiny(4, bits=8).eval()
    for x in (torch.zeros(1, 3, 12, 16), torch.zeros(1, 4, 16, 16), torch.full((1, 3, 8, 8), float("inf"))):
        with pytest.raises(InputError):
            tok.encode(x)
    for codes in (torch.full((1, 2, 2), 256), torch.full((1, 2, 2), -1), torch.zeros(1, 2, 2)):
        with pytest.raises(InputError):
            tok.decode(codes)
    with pytest.raises(ValueError):
        BinaryTokenizer(bits=10, sub_tokens=3)
    # save / load keeps the behaviour
    mmtok.hub.save(tok, weights_dir / "bin-tiny")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(mmtok.load("bin-tiny").encode(x), tok.encode(x))


def test_subtoken_usage_sees_bits_that_move_together():
    from mmtok.tokenizers.image_binary import subtoken_usage

    torch.manual_seed(0)
    # 8 independent balanced confident bits per sub-token: all 256 values in use -> about 1
    independent = (torch.rand(64, 16, 8, 8) > 0.5).float().clamp(0.001, 0.999)
    assert subtoken_usage(independent, 2) > 0.95
    # the same balanced bit copied 8 times: each bit is used half the time, the sub-token takes 2 values
    one = (torch.rand(64, 1, 8, 8) > 0.5).float().clamp(0.001, 0.999)
    copies = one.repeat(1, 16, 1, 1)
    assert abs(float(subtoken_usage(copies, 2)) - 1 / 8) < 0.02
    # the per-bit measure cannot tell the two apart; a training step logs both, and the subtoken
    # variant of the entropy term changes the loss
    tok = _tiny(4, bits=8, sub_tokens=2, usage_entropy="subtoken").train()
    loss, logs = tok.training_step({"image": torch.rand(2, 3, 16, 16) * 2 - 1})
    assert {"bit_usage", "subtoken_usage"} <= logs.keys() and 0 <= float(logs["subtoken_usage"]) <= 1
    loss.backward()
    with pytest.raises(ValueError):
        BinaryTokenizer(bits=8, sub_tokens=2, usage_entropy="code")


def test_two_perceptual_networks_each_add_their_term_and_consistency_picks_one_per_source(weights_dir):
    from mmtok.eval.judge import ShapesPerceptual

    torch.manual_seed(0)
    for name in ("percept-a", "percept-b"):
        mmtok.hub.save(ShapesPerceptual(widths=(8, 16), hidden=16, resolution=16), weights_dir / name)
    kw = dict(bits=8, pixel_loss="l2", train_encoder=False)
    tok = _tiny(
        perceptual=["percept-a", "percept-b"],
        perceptual_weight=[0.5, 2.0],
        consistency_weight=1.0,
        consistency_sources=("shapes", "shapes-hue"),
        consistency_networks={"shapes-hue": "percept-b"},
        **kw,
    )
    plain = _tiny(**kw)
    plain.load_state_dict(tok.state_dict())
    assert tok.state_dict().keys() == plain.state_dict().keys()  # neither network is saved
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    a, b = tok._perceptual_net("percept-a", x.device), tok._perceptual_net("percept-b", x.device)
    with torch.no_grad():
        recon = tok.decode_bits((tok.logits(x) > 0).float()).float()
        loss, logs = tok.training_step({"image": x, "source": ["shapes", "shapes-hue", "photos", "shapes"]})
        # Each network's distance is logged and weighted on its own.
        torch.testing.assert_close(logs["perceptual"], perceptual_distance(a, recon, x).mean())
        torch.testing.assert_close(logs["perceptual2"], perceptual_distance(b, recon, x).mean())
        # Palette shapes are read by the first network, hue-rotated ones by the second.
        by_a, by_b = logit_consistency(a, recon, x), logit_consistency(b, recon, x)
        assert not torch.allclose(by_a, by_b)
        torch.testing.assert_close(logs["consistency"], (by_a[0] + by_b[1] + by_a[3]) / 4)
        plain_loss = plain.training_step({"image": x})[0]
        expected = plain_loss + 0.5 * logs["perceptual"] + 2.0 * logs["perceptual2"] + logs["consistency"]
        torch.testing.assert_close(loss, expected)
    for bad in (
        {"perceptual": ["percept-a", "percept-b"], "perceptual_weight": 1.0},
        {"perceptual": ["percept-a", "percept-b"], "perceptual_weight": [1.0, 0.0]},
    ):
        with pytest.raises(ValueError, match="perceptual_weight"):
            _tiny(**bad)
    with pytest.raises(ValueError, match="consistency_networks"):
        _tiny(perceptual="percept-a", perceptual_weight=1.0, consistency_networks={"shapes": "percept-c"})


def test_consistency_heads_per_source(weights_dir):
    from mmtok.eval.judge import ShapesPerceptual

    torch.manual_seed(0)
    mmtok.hub.save(ShapesPerceptual(widths=(8, 16), hidden=16, resolution=16), weights_dir / "percept-tiny")
    kw = dict(bits=8, pixel_loss="l2", train_encoder=False, perceptual="percept-tiny", perceptual_weight=1.0)
    tok = _tiny(
        consistency_weight=1.0,
        consistency_sources=("shapes", "shapes-hue"),
        consistency_heads={"shapes-hue": ["shape", "size"]},
        **kw,
    )
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    net = tok._perceptual_net("percept-tiny", x.device)
    with torch.no_grad():
        recon = tok.decode_bits((tok.logits(x) > 0).float()).float()
        every = logit_consistency(net, recon, x)
        no_colour = logit_consistency(net, recon, x, heads=("shape", "size"))
        assert (every > no_colour).all()  # the colour head adds a positive KL: the two readings differ
        logs = tok.training_step({"image": x, "source": ["shapes", "shapes-hue", "photos", "shapes-hue"]})[1]
        # Palette shapes: all heads; hue-rotated shapes: shape and size only; photos: nothing.
        torch.testing.assert_close(logs["consistency"], (every[0] + no_colour[1] + no_colour[3]) / 4)
        # Without sources, every image with every head.
        torch.testing.assert_close(tok.training_step({"image": x})[1]["consistency"], every.mean())
    with pytest.raises(ValueError, match="not in consistency_sources"):
        _tiny(consistency_weight=1.0, consistency_heads={"digits": ["shape"]}, **kw)
