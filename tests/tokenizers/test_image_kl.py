import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

import mmtok
from mmtok.data import build_dataset
from mmtok.errors import InputError, MmtokError
from mmtok.tokenizers.image_kl import KLTokenizer, psnr, ssim, to_pixels


def _tiny(levels=3, **kw):
    # f = 2**(levels - 1); 8 channels per level keeps a forward pass at a few ms.
    return KLTokenizer(
        block_out_channels=[8, 16, 16, 16][:levels], latent_channels=4, norm_num_groups=4, **kw
    )


@pytest.mark.parametrize("levels, f", [(3, 4), (4, 8)])
@pytest.mark.parametrize("hw", [(32, 32), (64, 48), (8, 24)])
def test_encode_decode_shapes_for_any_multiple_of_f(levels, f, hw):
    torch.manual_seed(0)
    tok = _tiny(levels).eval()
    h, w = hw
    assert tok.downsample_factor == f and tok.latent_channels == 4
    x = torch.rand(2, 3, h, w) * 2 - 1
    with torch.no_grad():
        z = tok.encode(x)
        assert z.shape == (2, *tok.latent_shape((h, w))) == (2, 4, h // f, w // f)
        y = tok.decode(z)
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
        assert tok(x).shape == x.shape
        # mode is deterministic, a posterior sample is not
        torch.testing.assert_close(tok.encode(x), z)
        assert not torch.equal(tok.encode(x, sample=True), z)


def test_bad_inputs_raise_one_line_input_error():
    tok = _tiny(4).eval()
    bad = [
        torch.zeros(1, 1, 32, 32),  # grey
        torch.zeros(1, 3, 30, 32),  # not a multiple of 8
        torch.full((1, 3, 16, 16), float("nan")),
        torch.zeros(1, 3, 16, 16, dtype=torch.uint8),
        np.zeros((16, 16, 3)),
    ]
    for x in bad:
        with pytest.raises(InputError) as info:
            tok.encode(x)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError):
        tok.decode(torch.zeros(1, 3, 2, 2))  # 3 != 4 latent channels
    with pytest.raises(InputError):
        tok.latent_shape((20, 16))


def test_running_scale_estimate_matches_the_latents_and_survives_save_load(tmp_path, weights_dir):
    torch.manual_seed(0)
    tok = _tiny(3)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    tok.train()
    for _ in range(3):
        tok.training_step({"image": x})
    with torch.no_grad():
        raw = tok.vae.encode(x).latent_dist.mean
    # The running estimate (of the posterior means, what encode returns) standardises them per channel.
    assert int(tok.stats_batches) == 3
    z = tok.eval().encode(x)
    per_channel = z.transpose(0, 1).reshape(4, -1)
    assert per_channel.mean(1).abs().max() < 0.2 and (per_channel.std(1) - 1).abs().max() < 0.2
    assert not torch.allclose(tok.scaling_factor, torch.ones(4))
    raw_std = raw.transpose(0, 1).reshape(4, -1).std(1)
    torch.testing.assert_close(1 / tok.scaling_factor, raw_std, rtol=0.2, atol=0)

    folder = mmtok.hub.save(tok, weights_dir / "kl-tiny")
    again = mmtok.load("kl-tiny")
    assert isinstance(again, KLTokenizer)
    torch.testing.assert_close(again.scaling_factor, tok.scaling_factor)
    torch.testing.assert_close(again.latent_shift, tok.latent_shift)
    torch.testing.assert_close(again.encode(x), z)
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "KLTokenizer"


def test_from_diffusers_round_trip_offline(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.25,
        shift_factor=0.1,
    ).eval()
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    tok = KLTokenizer.from_diffusers(tmp_path / "vae")
    assert tok.downsample_factor == 2 and tok.latent_channels == 4
    torch.testing.assert_close(tok.scaling_factor, torch.full((4,), 0.25))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z_ref = vae.encode(x).latent_dist.mode()
        z = tok.encode(x)
        torch.testing.assert_close(z, (z_ref - 0.1) * 0.25)
        torch.testing.assert_close(tok.decode(z), vae.decode(z_ref).sample.clamp(-1, 1))
    # An explicit scaling factor wins; the result saves and loads like a trained model.
    assert torch.allclose(
        KLTokenizer.from_diffusers(tmp_path / "vae", scaling_factor=0.5).scaling_factor, torch.tensor(0.5)
    )
    mmtok.hub.save(tok, tmp_path / "as-mmtok")
    again = mmtok.load(tmp_path / "as-mmtok")
    torch.testing.assert_close(again.encode(x), z)
    with pytest.raises(MmtokError):
        KLTokenizer.from_diffusers(tmp_path / "missing")


def test_training_steps_reduce_reconstruction_loss():
    torch.manual_seed(0)
    tok = _tiny(3, pixel_loss="l2")
    data = build_dataset("shapes", "train", resolution=32, size=8)
    batch = torch.utils.data.default_collate([data[i] for i in range(8)])
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss, logs = tok.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
        assert set(logs) >= {"l1", "psnr", "kl"}
    assert loss.item() < 0.6 * first


def test_metrics_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    torch.manual_seed(0)
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    b = (a + 0.1 * torch.randn_like(a)).clamp(-1, 1)
    pa, pb = to_pixels(a), to_pixels(b)
    ours_psnr, ours_ssim = psnr(pa, pb), ssim(pa, pb)
    for i in range(2):
        ua, ub = pa[i].permute(1, 2, 0).numpy(), pb[i].permute(1, 2, 0).numpy()
        ref = structural_similarity(
            ua,
            ub,
            channel_axis=-1,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(float(ours_ssim[i]) - ref) < 1e-4
        assert abs(float(ours_psnr[i]) - peak_signal_noise_ratio(ua, ub, data_range=255)) < 1e-3


def test_evaluate_reports_per_source_metrics():
    torch.manual_seed(0)
    tok = _tiny(3)
    parts = [
        {"name": "shapes", "kwargs": {"resolution": 32}},
        {"name": "digits", "kwargs": {"resolution": 32}},
    ]
    data = build_dataset("mixture", "test", parts=parts, size=12)
    metrics = tok.evaluate(data, "cpu", batch_size=5)
    assert metrics["n"] == 12 and {"psnr", "ssim", "psnr_shapes", "ssim_digits"} <= set(metrics)
    assert 0 < metrics["psnr"] < 100 and -1 <= metrics["ssim"] <= 1


def test_decoder_only_fine_tuning_keeps_the_latents_and_improves_reconstruction():
    torch.manual_seed(0)
    tok = _tiny(3)
    tok.train()
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    for _ in range(3):  # some latent statistics and non-trivial encoder weights first
        tok.training_step({"image": x})[0].backward()
    tok.zero_grad()
    ft = _tiny(3, train_encoder=False)
    ft.load_state_dict(tok.state_dict())
    ft.eval()
    with torch.no_grad():
        z_before, loss_before = ft.encode(x), ft.training_step({"image": x})[0].item()
    ft.train()
    frozen = {n: p.detach().clone() for n, p in ft.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in ft.named_buffers()}
    assert frozen and all(n.startswith(("vae.encoder.", "vae.quant_conv.")) for n in frozen)
    opt = torch.optim.Adam([p for p in ft.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(80):
        loss, logs = ft.training_step({"image": x})
        assert set(logs) == {"l1", "psnr"}  # no KL term: the posterior is frozen
        opt.zero_grad()
        loss.backward()
        opt.step()
    ft.eval()
    with torch.no_grad():
        torch.testing.assert_close(ft.encode(x), z_before, rtol=0, atol=0)
        assert ft.training_step({"image": x})[0].item() < 0.8 * loss_before
    for n, p in ft.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for n, b in ft.named_buffers():
        assert torch.equal(b, buffers[n]), n


def _fit(model, params, x, steps: int = 30) -> tuple[float, float]:
    """Loss on ``x`` before and after ``steps`` Adam steps on ``params``."""
    opt = torch.optim.Adam(params, lr=3e-3)
    before = model.training_step({"image": x})[0].item()
    for _ in range(steps):
        loss, _ = model.training_step({"image": x})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, model.training_step({"image": x})[0].item()


def test_refine_head_loads_a_plain_decoder_unchanged_then_trains():
    torch.manual_seed(0)
    plain = _tiny(3)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    refined = _tiny(3, refine_channels=8, train_encoder=False)
    result = refined.load_state_dict(plain.state_dict(), strict=False)
    # Only the head is new: the last conv keeps its weight / bias names.
    assert not result.unexpected_keys
    assert result.missing_keys and all(".conv_out.refine." in k for k in result.missing_keys)
    plain.eval(), refined.eval()
    with torch.no_grad():
        torch.testing.assert_close(refined(x), plain(x), rtol=0, atol=0)  # zero-initialised head
    refined.train()
    head = [p for n, p in refined.named_parameters() if ".refine." in n]
    before, after = _fit(refined, head, x)
    assert after < before
    with pytest.raises(ValueError):
        _tiny(3, refine_channels=-1)


def test_head_alone_trains_only_the_head():
    torch.manual_seed(0)
    model = _tiny(3, refine_channels=8, train_encoder=False, train_decoder=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".refine." in n for n in trainable)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before, after = _fit(model, [p for p in model.parameters() if p.requires_grad], x)
    assert after < before
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    for bad in ({"refine_channels": 8}, {"train_encoder": False}):  # needs a head and a frozen encoder
        with pytest.raises(ValueError, match="train_decoder"):
            _tiny(3, train_decoder=False, **bad)
