"""The shipped tokenizer weights load and reconstruct held-out data at their measured quality."""

import torch

import mmtok
from mmtok.data import build_dataset
from mmtok.tokenizers.image_kl import psnr, to_pixels


def _heldout(n=16):
    ds = build_dataset("shapes", "heldout", resolution=64)
    return torch.stack([ds[i]["image"] for i in range(n)])


def test_kl_f8_64_reconstructs_heldout_scenes():
    tok = mmtok.load("kl-f8-64")
    images = _heldout()
    with torch.no_grad():
        z = tok.encode(images)
        recon = tok.decode(z)
    assert z.shape == (16, 16, 8, 8)
    assert 0.6 < float(z.std()) < 1.4 and abs(float(z.mean())) < 0.3  # scaled to about unit variance
    assert float(psnr(to_pixels(images), to_pixels(recon)).mean()) > 34.0  # measured: 37.8 dB on 512


def test_bin_f8_64_codes_and_reconstruction():
    tok = mmtok.load("bin-f8-64")
    images = _heldout()
    with torch.no_grad():
        codes = tok.encode(images)
        recon = tok.decode(codes)
    assert codes.shape == (16, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**16
    assert torch.equal(tok.merge_codes(tok.split_codes(codes)), codes)
    assert float(psnr(to_pixels(images), to_pixels(recon)).mean()) > 28.0  # measured: 30.4 dB on 512
