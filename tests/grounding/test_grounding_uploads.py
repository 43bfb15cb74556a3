"""Uploads recognised by content: NIfTI under any name, zipped DICOM PET/CT series, unsafe zips."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest
from petct_helpers import write_pet_series

from mmtok.errors import InputError
from mmtok.grounding.io import dicom_pet_to_suv, extract_zip, load_ct, read_upload


def _zip(folder, path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            z.write(f, f.relative_to(folder.parent))
    return path


def _stored(shape=(6, 8, 10)):
    return np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)


def test_zipped_dicom_pet_and_ct_series(tmp_path):
    stored = _stored()
    pet_dir = write_pet_series(tmp_path / "pet" / "series", stored)
    want = np.asarray(dicom_pet_to_suv(pet_dir)[0].dataobj)
    got = read_upload(_zip(pet_dir, tmp_path / "pet.zip"), "PET", tmp_path / "work")
    np.testing.assert_allclose(np.asarray(got.dataobj), want, rtol=1e-6)

    ct_dir = write_pet_series(
        tmp_path / "ct" / "series",
        stored,
        slopes=np.ones(6),
        header={"Modality": "CT", "RescaleIntercept": -1024.0},
    )
    ct = read_upload(_zip(ct_dir, tmp_path / "ct.bin"), "CT", tmp_path / "work2")  # any name: content counts
    hu = np.asarray(ct.dataobj)
    assert hu.shape == (10, 8, 6)  # [col, row, slice]
    np.testing.assert_allclose(hu[..., 0], stored[0].T.astype(np.float32) - 1024)
    np.testing.assert_allclose(np.asarray(load_ct(ct_dir).dataobj), hu)
    with pytest.raises(InputError, match="no DICOM CT"):
        read_upload(_zip(pet_dir, tmp_path / "pet2.zip"), "CT", tmp_path / "work3")


def test_nifti_under_any_name_and_non_volumes_refused(tmp_path):
    data = np.random.default_rng(1).random((6, 7, 8)).astype(np.float32)
    for name in ("volume.nii.gz", "volume.bin", "volume.nii"):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), str(tmp_path / "x.nii.gz"))
        (tmp_path / "x.nii.gz").rename(path)  # gzipped bytes whatever the name says
        img = read_upload(path, "PET", tmp_path / f"w-{name}")
        np.testing.assert_allclose(np.asarray(img.dataobj), data)
    text = tmp_path / "report.nii.gz"
    text.write_text("not a volume")
    with pytest.raises(InputError, match="neither a NIfTI volume nor a zip"):
        read_upload(text, "PET", tmp_path / "w")
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="missing or empty"):
        read_upload(empty, "CT", tmp_path / "w")


def test_unsafe_zips_are_refused_and_nothing_escapes(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escaped.dcm", b"x" * 10)
    with pytest.raises(InputError, match="unsafe member"):
        extract_zip(evil, tmp_path / "out")
    assert not (tmp_path / "escaped.dcm").exists() and not (tmp_path / "out").exists()

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\0" * (3 << 20))  # compresses to a few kB
    assert bomb.stat().st_size < 50_000
    with pytest.raises(InputError, match="unpacks to more than 1 MB"):
        extract_zip(bomb, tmp_path / "out2", max_bytes=1 << 20)
    assert not (tmp_path / "out2").exists()

    broken = tmp_path / "broken.zip"
    broken.write_bytes(evil.read_bytes()[:30])
    with pytest.raises(InputError):
        extract_zip(broken, tmp_path / "out3")
