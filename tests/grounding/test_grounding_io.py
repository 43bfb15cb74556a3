import logging

import nibabel as nib
import numpy as np
import pytest
from petct_helpers import DELTA_T_S, expected_suv, write_pet_series

from mmtok.errors import InputError, MmtokError
from mmtok.grounding import io


def _nifti(tmp_path, data, affine=None, name="v.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


# ----------------------------------------------------------------------------- NIfTI


def test_load_volume_rejects_bad_inputs_with_one_line(tmp_path):
    cases = {
        "missing": (tmp_path / "nope.nii.gz", "not found"),
        "2d": (_nifti(tmp_path, np.zeros((8, 8), np.float32), name="a.nii.gz"), "3D"),
        "flat": (_nifti(tmp_path, np.zeros((8, 8, 1), np.float32), name="b.nii.gz"), "2D slice"),
        "nan": (_nifti(tmp_path, np.full((4, 4, 4), np.nan, np.float32), name="c.nii.gz"), "NaN"),
    }
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti at all")
    cases["junk"] = (junk, "not a readable NIfTI")
    for path, words in cases.values():
        with pytest.raises(InputError, match=words) as e:
            io.load_volume(path, "PET")
        assert "\n" not in str(e.value)


def test_load_volume_drops_singleton_4th_axis_and_keeps_affine(tmp_path):
    aff = np.diag([-2.0, -2.0, 3.0, 1.0])
    img = io.load_volume(_nifti(tmp_path, np.ones((4, 5, 6, 1), np.float32), aff))
    assert img.shape == (4, 5, 6) and np.allclose(img.affine, aff)


def test_save_mask_writes_uint8_with_pet_affine(tmp_path):
    aff = np.array([[-4, 0, 0, 10], [0, -4, 0, 20], [0, 0, 4, -30], [0, 0, 0, 1.0]])
    pet = nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), aff)
    mask = np.zeros((5, 6, 7), bool)
    mask[1, 2, 3] = True
    out = nib.load(str(io.save_mask(mask, pet, tmp_path / "m.nii.gz")))
    assert out.get_data_dtype() == np.uint8 and np.allclose(out.affine, aff)
    assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 1
    assert np.asarray(out.dataobj)[1, 2, 3] == 1 and np.asarray(out.dataobj).sum() == 1


def test_resample_ct_onto_pet_grid_uses_world_coordinates():
    # CT 2 mm, PET 4 mm with a different origin and a flipped first axis; a CT linear in world x
    # must read the same function of world x on the PET grid (and -1024 outside the CT).
    ct_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    i = np.arange(40)[:, None, None]
    ct = np.broadcast_to(i * 2.0, (40, 40, 40)).astype(np.float32)  # value = world x
    pet_aff = np.array([[-4.0, 0, 0, 60], [0, 4, 0, 4], [0, 0, 4, 4], [0, 0, 0, 1]])
    pet = nib.Nifti1Image(np.zeros((20, 10, 10), np.float32), pet_aff)
    out = io.resample_to_pet(nib.Nifti1Image(ct, ct_aff), pet)
    assert out.shape == pet.shape and np.allclose(out.affine, pet_aff)
    data = np.asarray(out.dataobj)
    world_x = 60 - 4 * np.arange(20)
    inside = (world_x >= 0) & (world_x <= 78)
    assert np.allclose(data[inside, 3, 3], world_x[inside], atol=1e-3)
    assert (data[~inside, 3, 3] == io.CT_FILL_HU).all()


def test_check_same_grid():
    a = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    b = nib.Nifti1Image(np.zeros((4, 4, 5), np.float32), np.eye(4))
    io.check_same_grid(a, a)
    with pytest.raises(InputError, match="does not match the PET grid"):
        io.check_same_grid(a, b)


@pytest.mark.parametrize("head_up", [True, False])
@pytest.mark.parametrize("origin", ["head", "foot"])
@pytest.mark.parametrize("base", [0, 1])
def test_report_slice_numbering_round_trips(head_up, origin, base):
    n = 10
    idx = [io.report_slice_to_index(s, n, head_up, origin, base) for s in range(base, n + base)]
    assert sorted(idx) == list(range(n))
    for s, k in zip(range(base, n + base), idx, strict=True):
        assert io.index_to_report_slice(k, n, head_up, origin, base) == s
    # Slice `base` counted from the head is the top-most image.
    top = n - 1 if head_up else 0
    assert io.report_slice_to_index(base, n, head_up, "head", base) == top
    with pytest.raises(InputError, match="outside the 10 axial slices"):
        io.report_slice_to_index(n + base, n, head_up, origin, base)


def test_axis_helpers_read_the_affine():
    lps = np.diag([-4.0, -4.0, 4.0, 1.0])
    assert io.axial_axis(lps) == (2, True) and io.lr_axis(lps) == (0, True)
    swapped = np.array([[0, 0, 4.0, 0], [0, -4.0, 0, 0], [-4.0, 0, 0, 0], [0, 0, 0, 1]])  # z first, feet up
    assert io.axial_axis(swapped) == (0, False) and io.lr_axis(swapped) == (2, False)


# ----------------------------------------------------------------------------- DICOM -> SUV


def test_dicom_suv_matches_qiba_formula_with_per_slice_slopes(pet_series, caplog):
    folder, stored, slopes = pet_series
    with caplog.at_level(logging.INFO, logger="mmtok.grounding.io"):
        img, info = io.dicom_pet_to_suv(folder)
    assert "SeriesTime" in caplog.text  # the time reference is logged
    assert info.time_reference == "SeriesTime" and info.delta_t_s == DELTA_T_S
    assert info.injection_time_source == "RadiopharmaceuticalStartDateTime"
    bqml = stored.astype(float) * slopes[:, None, None]  # [slice, row, col]
    want = expected_suv(bqml).transpose(2, 1, 0)  # -> [col, row, slice]
    assert img.shape == (7, 6, 5)
    assert np.allclose(np.asarray(img.dataobj), want, rtol=1e-5)
    # Files were shuffled on disk: slices are sorted by position; affine maps LPS -> RAS.
    assert np.allclose(img.affine @ [0, 0, 0, 1], [10.0, 20.0, 100.0, 1])
    assert np.allclose(img.affine @ [1, 1, 4, 1], [10.0 - 2.5, 20.0 - 2.0, 112.0, 1])
    assert io.axis_codes(img.affine) == ("L", "P", "S")


@pytest.mark.parametrize(
    "header, radiopharm, tag",
    [
        ({"Units": None}, None, "Units"),
        ({"Units": "PROPCNTS"}, None, "Units"),
        ({"DecayCorrection": None}, None, "DecayCorrection"),
        ({"DecayCorrection": "NONE"}, None, "DecayCorrection"),
        ({"CorrectedImage": ["ATTN"]}, None, "CorrectedImage"),
        ({"PatientWeight": None}, None, "PatientWeight"),
        ({"PatientWeight": 80000}, None, "PatientWeight"),
        ({"SeriesTime": None}, None, "SeriesTime"),
        ({"RescaleSlope": None}, None, "RescaleSlope"),
        ({"RadiopharmaceuticalInformationSequence": None}, None, "RadiopharmaceuticalInformationSequence"),
        ({}, {"RadionuclideTotalDose": None}, "RadionuclideTotalDose"),
        ({}, {"RadionuclideTotalDose": 370.0}, "RadionuclideTotalDose"),
        ({}, {"RadionuclideHalfLife": None}, "RadionuclideHalfLife"),
        ({}, {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": None},
         "RadiopharmaceuticalStartTime"),
        ({}, {"RadiopharmaceuticalStartDateTime": "20240101110000"}, "RadiopharmaceuticalStartDateTime"),
    ],
)  # fmt: skip
def test_dicom_missing_or_bad_tags_name_the_tag(tmp_path, header, radiopharm, tag):
    stored = np.ones((3, 4, 4), np.uint16) * 100
    folder = write_pet_series(tmp_path / "s", stored, header=header, radiopharm=radiopharm)
    with pytest.raises(InputError, match=tag) as e:
        io.dicom_pet_to_suv(folder)
    assert "\n" not in str(e.value)


def test_dicom_contradictory_tags_across_slices(tmp_path):
    stored = np.ones((3, 4, 4), np.uint16) * 100
    folder = write_pet_series(tmp_path / "s", stored, per_slice={1: {"PatientWeight": 70.0}})
    with pytest.raises(InputError, match=r"contradictory PatientWeight \(0010,1030\)"):
        io.dicom_pet_to_suv(folder)


def test_dicom_admin_decay_applies_no_decay(tmp_path):
    stored = np.full((3, 4, 4), 1000, np.uint16)
    img, info = io.dicom_pet_to_suv(
        write_pet_series(tmp_path / "s", stored, header={"DecayCorrection": "ADMIN"})
    )
    assert info.decay_factor == 1.0
    assert np.allclose(np.asarray(img.dataobj), 500 * 80_000 / 370e6, rtol=1e-5)


def test_dicom_start_time_only_uses_series_date_and_midnight_crossing(tmp_path):
    stored = np.full((2, 4, 4), 1000, np.uint16)
    rp = {"RadiopharmaceuticalStartDateTime": None, "RadiopharmaceuticalStartTime": "233000"}
    header = {"SeriesTime": "003000", "AcquisitionTime": "003000"}
    img, info = io.dicom_pet_to_suv(write_pet_series(tmp_path / "s", stored, header=header, radiopharm=rp))
    assert info.delta_t_s == 3600.0 and info.injection_time_source == "RadiopharmaceuticalStartTime"
    assert any("midnight" in n for n in info.notes)
    assert np.allclose(np.asarray(img.dataobj), expected_suv(np.full((4, 4, 2), 500.0)), rtol=1e-5)


def test_dicom_post_processed_series_time(tmp_path):
    stored = np.full((2, 4, 4), 1000, np.uint16)
    late = {"SeriesTime": "120000"}  # series written after the acquisition at 10:00
    with pytest.raises(InputError, match=r"0009,100D"):
        io.dicom_pet_to_suv(write_pet_series(tmp_path / "a", stored, header=late))
    folder = write_pet_series(tmp_path / "b", stored, header=late)
    import pydicom

    for f in folder.iterdir():  # add GE's private scan start: 10:30 -> dt 5400 s
        ds = pydicom.dcmread(str(f))
        ds.add_new((0x0009, 0x0010), "LO", "GEMS_PETD_01")
        ds.add_new((0x0009, 0x100D), "DT", "20240101103000")
        ds.save_as(str(f))
    img, info = io.dicom_pet_to_suv(folder)
    assert info.time_reference == "GE (0009,100D)" and info.delta_t_s == 5400.0


def test_dicom_folder_problems(tmp_path):
    with pytest.raises(InputError, match="not found"):
        io.dicom_pet_to_suv(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM PET"):
        io.dicom_pet_to_suv(tmp_path / "empty")
    stored = np.ones((2, 4, 4), np.uint16)
    write_pet_series(tmp_path / "two" / "a", stored)
    write_pet_series(tmp_path / "two" / "b", stored)
    with pytest.raises(InputError, match="2 PET series"):
        io.dicom_pet_to_suv(tmp_path / "two")
    folder = write_pet_series(
        tmp_path / "dup", stored, per_slice={1: {"ImagePositionPatient": [-10, -20, 100.0]}}
    )
    with pytest.raises(MmtokError, match="ImagePositionPatient"):
        io.dicom_pet_to_suv(folder)


def test_load_pet_accepts_a_dicom_folder(pet_series):
    folder, _, _ = pet_series
    img, info = io.load_pet(folder)
    assert img.shape == (7, 6, 5) and info is not None and info.units == "BQML"


def test_dicom_philips_cnts_and_gml_units(tmp_path):
    import pydicom

    stored = np.full((2, 4, 4), 1000, np.uint16)
    cnts = write_pet_series(tmp_path / "c", stored, header={"Units": "CNTS"})
    with pytest.raises(InputError, match=r"7053,1000"):
        io.dicom_pet_to_suv(cnts)
    for f in cnts.iterdir():  # Philips private SUV scale factor
        ds = pydicom.dcmread(str(f))
        ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
        ds.add_new((0x7053, 0x1000), "DS", "0.002")
        ds.save_as(str(f))
    img, info = io.dicom_pet_to_suv(cnts)
    assert info.units == "CNTS" and np.allclose(np.asarray(img.dataobj), 1000 * 0.5 * 0.002)
    gml = write_pet_series(tmp_path / "g", stored, header={"Units": "GML", "CorrectedImage": None})
    img, info = io.dicom_pet_to_suv(gml)
    assert np.allclose(np.asarray(img.dataobj), 500.0)  # already SUV: only the rescale applies
