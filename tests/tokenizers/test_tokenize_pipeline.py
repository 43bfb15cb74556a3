"""`mmtok tokenize`, `mmtok eval tokenizer`, image file validation, judge-FID -- on tiny real tokenizers."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import mmtok
from mmtok.cli import main
from mmtok.data import build_dataset, to_uint8
from mmtok.data.imagefile import read_image
from mmtok.errors import InputError
from mmtok.eval.fid import frechet_distance
from mmtok.tokenizers.image_binary import BinaryTokenizer
from mmtok.tokenizers.image_kl import KLTokenizer
from mmtok.tokenizers.pipeline import TokenizePipeline, code_grid_image, crop_to_multiple


@pytest.fixture
def tiny_tokenizers(weights_dir):
    torch.manual_seed(0)
    kl = KLTokenizer(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4)
    binary = BinaryTokenizer(bits=8, sub_tokens=2, block_out_channels=(8, 16), norm_num_groups=4)
    mmtok.save(kl, weights_dir / "kl-tiny")
    mmtok.save(binary, weights_dir / "bin-tiny")
    return weights_dir


@pytest.fixture
def image_files(tmp_path):
    data = build_dataset("shapes", "test", size=3)
    paths = []
    for i in range(2):
        path = tmp_path / f"scene{i}.png"
        Image.fromarray(to_uint8(data[i]["image"])).save(path)
        paths.append(path)
    odd = tmp_path / "odd.jpg"  # sides not multiples of the factor: centre-cropped
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(odd)
    return [*paths, odd]


def test_read_image_validates_by_content(tmp_path, image_files):
    image = read_image(image_files[0])
    assert image.shape == (3, 64, 64) and image.min() >= -1 and image.max() <= 1
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "fake.png"
    text.write_text("not an image at all")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(image_files[0].read_bytes()[:200])
    huge = tmp_path / "huge.png"
    Image.new("L", (9000, 10)).save(huge)
    for path, words in [
        (empty, "empty"),
        (text, "not an image"),
        (truncated, "truncated"),
        (huge, "exceeds"),
        (tmp_path / "missing.png", "no such file"),
    ]:
        with pytest.raises(InputError, match=words):
            read_image(path)


def test_pipeline_kl_and_binary(tiny_tokenizers, image_files, tmp_path):
    kl = TokenizePipeline("kl-tiny")
    results = kl.run_files(image_files, out=tmp_path / "out")
    assert [r["token_shape"] for r in results] == [[4, 32, 32], [4, 32, 32], [4, 18, 25]]
    assert results[2]["cropped_to"] == [36, 50]
    recon = read_image(results[0]["reconstruction"])
    assert recon.shape == (3, 64, 64)
    # The reported PSNR is the PSNR of the written PNG against the input.
    original = read_image(image_files[0])
    mse = ((recon - original) * 127.5).pow(2).mean()
    assert abs(10 * torch.log10(255**2 / mse) - results[0]["psnr"]) < 0.01

    binary = TokenizePipeline("bin-tiny")
    (r,) = binary.run_files(image_files[:1], out=tmp_path / "out")
    codes = torch.tensor(r["codes"])
    assert codes.shape == (32, 32) and codes.min() >= 0 and codes.max() < 256
    grid = read_image(r["code_grid"])
    assert grid.shape == (3, 32 * 8, 32 * 8)
    assert (code_grid_image(codes, 8)[:, ::8, ::8].unique(dim=1).shape[1]) >= 1


def test_crop_and_code_grid_colours():
    assert crop_to_multiple(torch.zeros(3, 17, 9), 8).shape == (3, 16, 8)
    with pytest.raises(InputError):
        crop_to_multiple(torch.zeros(3, 7, 64), 8)
    codes = torch.tensor([[0, 255], [255, 0]])
    grid = code_grid_image(codes, 8, cell=1)
    assert torch.equal(grid[:, 0, 0], grid[:, 1, 1]) and not torch.equal(grid[:, 0, 0], grid[:, 0, 1])


def test_cli_tokenize_json_and_bad_files(tiny_tokenizers, image_files, tmp_path, capsys):
    assert main(["tokenize", *map(str, image_files[:2]), "--model", "bin-tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["images"]) == 2 and all("codes" in r for r in out["images"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    outdir = tmp_path / "nothing"
    assert main(["tokenize", str(image_files[0]), str(bad), "--model", "kl-tiny", "--out", str(outdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.png" in err
    assert not outdir.exists()  # inputs are validated before any work or output


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = frechet_distance(a, a + 2.0)
    assert shifted == pytest.approx(16.0, rel=1e-6)  # |mu|^2 = 4 dims x 2^2, same covariance
    assert frechet_distance(a, rng.normal(size=(2000, 4)) * 3) > 10


def test_eval_tokenizer_cli(tiny_tokenizers, capsys, monkeypatch):
    assert main(["eval", "tokenizer", "--model", "kl-tiny", "--n", "8", "--json"]) == 2  # no judge here
    assert "judge-shapes64" in capsys.readouterr().err
    shipped = mmtok.hub.Path(mmtok.__file__).resolve().parent.parent / "weights"
    monkeypatch.setenv("MMTOK_WEIGHTS", f"{tiny_tokenizers}:{shipped}")
    assert main(["eval", "tokenizer", "--model", "bin-tiny", "--n", "8", "--json", "--write"]) == 0
    result = json.loads(capsys.readouterr().out)["bin-tiny"]
    for bed in ("shapes_heldout", "digits_test", "photos_test"):
        assert result[f"{bed}/n"] == 8 and 0 < result[f"{bed}/psnr"] < 40 and -1 <= result[f"{bed}/ssim"] <= 1
    assert result["shapes_heldout/judge_exact_original"] == 1.0  # the shipped judge reads real scenes
    assert result["shapes_heldout/judge_exact_reconstruction"] < 1.0  # an untrained tokenizer garbles them
    assert result["shapes_heldout/judge_fid"] > 0
    for part in ("shape", "colour", "size", "small_object", "large_object"):
        assert result[f"shapes_heldout/judge_{part}_acc_original"] == 1.0
        assert 0 <= result[f"shapes_heldout/judge_{part}_acc_reconstruction"] <= 1
    # An object is right only when all three attributes are: never more often than its weakest one.
    weakest = min(result[f"shapes_heldout/judge_{a}_acc_reconstruction"] for a in ("shape", "colour", "size"))
    assert result["shapes_heldout/judge_object_acc_reconstruction"] <= weakest
    card = json.loads((tiny_tokenizers / "bin-tiny" / "metrics.json").read_text())
    assert card["shapes_heldout/psnr"] == result["shapes_heldout/psnr"]
