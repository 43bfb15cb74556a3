"""`mmtok ground` and `mmtok eval grounding`: files in, one mask out; orientation, resampling, errors."""

import argparse
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mmtok import hub
from mmtok.cli import main
from mmtok.grounding.cli import eval_grounding
from mmtok.grounding.model import ContextualNet3D
from mmtok.grounding.phantom import make_case, write_case
from mmtok.grounding.pipeline import ground

SHAPE, SPACING = (32, 32, 48), 8.0
TEXT = "Hypermetabolic left axillary node, SUVmax 7.2 (image 98)."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = ContextualNet3D(
        filters=(8, 16, 24), strides=(1, 2, 2), text_levels=(0, 1), patch=(32, 32, 32), spacing_mm=SPACING
    )
    g = torch.Generator().manual_seed(1)
    for gate in model.gates.values():  # trained-like gates, so the sentence matters
        gate.attn.out_proj.weight.data = torch.randn(gate.attn.out_proj.weight.shape, generator=g) * 0.5
    with torch.no_grad():  # bias the output towards foreground so the untrained net gives masks
        model.unet.output_block.conv.conv.bias.copy_(torch.tensor([-1.0, 1.0]))
    return hub.save(model, tmp_path_factory.mktemp("w") / "tiny-ground")


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return write_case(make_case(3, 0, shape=SHAPE, spacing=(SPACING,) * 3), tmp_path_factory.mktemp("case"))


def test_ground_cli_writes_a_mask_on_the_pet_grid(model_dir, case_dir, tmp_path, capsys):
    out = tmp_path / "mask.nii.gz"
    png = tmp_path / "overlay.png"
    pet_path, ct_path = str(case_dir / "SUV.nii.gz"), str(case_dir / "CTres.nii.gz")
    argv = ["--pet", pet_path, "--ct", ct_path, "--text", TEXT, "--model", str(model_dir), "--out", str(out)]
    code = main(["ground", *argv, "--overlay", str(png), "--json"])
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("voxels", "volume_ml", "peak_suv", "peak_voxel", "centroid_voxel", "seconds"):
        assert key in info
    pet = nib.load(case_dir / "SUV.nii.gz")
    mask = nib.load(out)
    assert mask.shape == pet.shape and np.allclose(mask.affine, pet.affine)
    m = np.asarray(mask.dataobj) > 0
    assert info["voxels"] == int(m.sum()) > 0
    suv = pet.get_fdata()
    assert suv[m].min() >= 1.0  # SUV < 1 zeroed
    from scipy import ndimage

    assert ndimage.label(m, structure=np.ones((3, 3, 3)))[1] == 1  # one lesion per sentence
    assert info["peak_suv"] == pytest.approx(float(suv[m].max()), abs=1e-3)
    assert info["model_text"] == "Hypermetabolic left axillary node, SUVmax."
    assert png.stat().st_size > 1000


def test_orientation_is_read_from_the_affine(model_dir, case_dir):
    pet, ct = nib.load(case_dir / "SUV.nii.gz"), nib.load(case_dir / "CTres.nii.gz")
    ref = ground(pet, ct, TEXT, model=str(model_dir))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = pet.shape[0] - 1  # index i -> n-1-i: the same world, the array stored the other way
    aff = pet.affine @ flip
    flipped = [nib.Nifti1Image(np.asarray(im.dataobj)[::-1].copy(), aff) for im in (pet, ct)]
    res = ground(*flipped, TEXT, model=str(model_dir))
    np.testing.assert_allclose(res.probability[::-1], ref.probability, atol=1e-5)
    np.testing.assert_array_equal(res.mask[::-1], ref.mask)


def test_ct_off_grid_is_resampled_and_pet_off_spacing_works(model_dir, case_dir):
    pet, ct = nib.load(case_dir / "SUV.nii.gz"), nib.load(case_dir / "CTres.nii.gz")
    ct_half = nib.Nifti1Image(
        np.asarray(ct.dataobj)[::2, ::2, ::2].copy(), ct.affine @ np.diag([2, 2, 2, 1.0])
    )
    res = ground(pet, ct_half, TEXT, model=str(model_dir))
    assert "CT resampled onto the PET grid" in res.info["notes"]
    fine = nib.Nifti1Image(
        np.repeat(np.asarray(pet.dataobj), 2, axis=2), pet.affine @ np.diag([1, 1, 0.5, 1.0])
    )
    fine_ct = nib.Nifti1Image(np.repeat(np.asarray(ct.dataobj), 2, axis=2), fine.affine)
    res = ground(fine, fine_ct, TEXT, model=str(model_dir))
    assert res.mask.shape == fine.shape and any("resampled to" in n for n in res.info["notes"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--text": "  "}, "--text is empty"),
        ({"--pet": "missing.nii.gz"}, "PET file not found"),
        ({"--out": "mask.png"}, "--out must be a NIfTI"),
        ({"--model": "no-such-model"}, "unknown model"),
    ],
)
def test_bad_input_is_one_line_exit_2(model_dir, case_dir, tmp_path, capsys, change, message):
    argv = {"--pet": str(case_dir / "SUV.nii.gz"), "--ct": str(case_dir / "CTres.nii.gz"), "--text": TEXT,
            "--model": str(model_dir), "--out": str(tmp_path / "m.nii.gz")} | change  # fmt: skip
    code = main(["ground", *[x for kv in argv.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_not_suv_pet_is_rejected(model_dir, tmp_path):
    from mmtok.errors import InputError

    img = nib.Nifti1Image(np.full((16, 16, 16), 0.5, np.float32), np.eye(4) * 4 + np.diag([0, 0, 0, -3]))
    with pytest.raises(InputError, match="SUV units"):
        ground(img, img, TEXT, model=str(model_dir))


def test_eval_grounding_scores_queries(model_dir):
    import mmtok.grounding.grounding_eval as ge

    args = argparse.Namespace(model=[str(model_dir)], n=1, seed=0, json=True, device="cpu", shape=SHAPE)
    out = eval_grounding(args)[str(model_dir)]
    assert out["cases"] == 1 and out["queries"] >= 1 and out["phantom_seed"] == ge.HELDOUT_SEED_OFFSET
    for key in ("f1_suv_match", "f1_overlap", "f1_dice_0.5", "mean_dice", "mean_fpv_ml", "mean_fnv_ml"):
        assert key in out
    assert set(out["f1_suv_match_by_band"]) >= {"size <15mm", "suv 2.5-4"}


def test_eval_grounding_write_records_the_card(model_dir, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(model_dir, tmp_path / "tiny-ground-card")
    args = argparse.Namespace(
        model=[str(folder)], n=1, seed=0, json=True, device="cpu", shape=SHAPE, write=True
    )
    out = eval_grounding(args)[str(folder)]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["f1_suv_match"] == out["f1_suv_match"] and metrics["queries"] == out["queries"]
    card = (folder / "README.md").read_text()
    assert "## Grounding evaluation" in card and f"--model {folder} --n 1 --seed 0" in card
