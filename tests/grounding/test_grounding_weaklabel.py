import json
import re

import nibabel as nib
import numpy as np
import pytest
from petct_helpers import SMALL
from scipy import ndimage

from mmtok.errors import InputError
from mmtok.grounding.phantom import make_case, write_case
from mmtok.grounding.reports import parse_report
from mmtok.grounding.weaklabel import WeakLabelConfig, run_weaklabel, weak_label

FIELDS = {"sentence", "suvmax", "slice", "side", "organ", "status", "reason", "peak_voxel", "peak_suv",
          "centroid_voxel", "volume_ml", "mask"}  # fmt: skip


@pytest.fixture(scope="module")
def cases():
    return [make_case(seed=5, index=i, **SMALL) for i in range(4)]


def _unambiguous(case):
    return [les for les in case.truth["lesions"] if les["expect"] == "located"]


def _first_located(cases):
    return next((c, les) for c in cases for les in _unambiguous(c))


def _result_for(les, results):
    (r,) = [r for r in results if r["suvmax"] == les["suvmax"] and r["slice"] == les["slice"]]
    return r


def test_locates_and_segments_phantom_lesions(cases):
    dices = []
    for case in cases:
        results = weak_label(parse_report(case.report), case.pet_image())
        for les in _unambiguous(case):
            r = _result_for(les, results)
            assert r["status"] == "located", r["reason"]
            assert case.seg[tuple(r["peak_voxel"])] == les["label"]
            true = case.seg == les["label"]
            dice = 2 * (r["_mask"] & true).sum() / (r["_mask"].sum() + true.sum())
            assert dice >= 0.4  # 8 mm lesions are 2 voxels across: blur makes their masks larger
            dices.append(dice)
            assert r["peak_suv"] == pytest.approx(les["suvmax_exact"], abs=1e-3)
        for r in results:  # nothing located outside a lesion (distractors are skipped)
            if r["status"] == "located":
                assert case.seg[tuple(r["peak_voxel"])] > 0
            assert FIELDS <= set(r)
    assert len(dices) >= 5 and np.mean(dices) > 0.7


def _reoriented(case, ornt):
    img = case.pet_image().as_reoriented(ornt)
    return nib.Nifti1Image(np.ascontiguousarray(img.get_fdata(dtype=np.float32)), img.affine)


@pytest.mark.parametrize(
    "ornt",
    [
        [[0, -1], [1, 1], [2, -1]],  # flip left-right and head-foot
        [[2, 1], [0, 1], [1, -1]],  # axial axis first, a transposed array
    ],
)
def test_orientation_comes_from_the_affine(cases, ornt):
    case = cases[0]
    base = weak_label(parse_report(case.report), case.pet_image())
    moved = weak_label(parse_report(case.report), _reoriented(case, ornt))
    seg = nib.Nifti1Image(case.seg, case.affine).as_reoriented(ornt).get_fdata()
    for a, b in zip(base, moved, strict=True):
        assert a["status"] == b["status"]
        if a["status"] == "located":
            assert seg[tuple(b["peak_voxel"])] == case.seg[tuple(a["peak_voxel"])]
            assert a["volume_ml"] == pytest.approx(b["volume_ml"])


def test_slice_origin_and_base_options(cases):
    case = cases[1]
    nz = case.suv.shape[2]
    # Renumber the report from the feet, 0-based: head-1-based s -> nz - s.
    text = re.sub(r"(image|slice|im|/)(\s*)(\d+)", lambda m: f"{m[1]}{m[2]}{nz - int(m[3])}", case.report)
    config = WeakLabelConfig(slice_origin="foot", slice_base=0)
    base = weak_label(parse_report(case.report), case.pet_image())
    other = weak_label(parse_report(text), case.pet_image(), config=config)
    assert [r["status"] for r in base] == [r["status"] for r in other]
    assert [r["peak_voxel"] for r in base] == [r["peak_voxel"] for r in other]


def test_out_of_range_slice_wrong_side_and_missing_lesion(cases):
    case, les = _first_located(cases)
    s, k = f"{les['suvmax']:.1f}", les["slice"]
    report = (
        f"Right axillary node, SUVmax {s} (image 400).\n"  # beyond 64 slices
        f"Focal uptake, SUVmax 19.7 (image {k}).\n"  # no such lesion
    )
    if les["side"] in ("left", "right"):
        wrong = "right" if les["side"] == "left" else "left"
        report += f"Focal {wrong} uptake, SUVmax {s} (image {k}).\n"
    results = weak_label(parse_report(report), case.pet_image())
    assert results[0]["status"] == "skipped" and "outside the 64 axial slices" in results[0]["reason"]
    assert results[1]["status"] == "not_found" and "19.7" in results[1]["reason"]
    if len(results) == 3:  # the wrong side is rejected unless the lesion sits within 20 mm of the midline
        r = results[2]
        assert r["status"] == "not_found" or ("midline" in r["reason"] and r["confidence"] < 1)


def _blobs(centres, peak, sigma=1.5, shape=(40, 40, 60), extra=None):
    vol = np.full(shape, 0.7, np.float32)
    for c in centres:
        spot = np.zeros(shape, np.float32)
        spot[c] = 1.0
        spot = ndimage.gaussian_filter(spot, sigma)
        vol += spot / spot.max() * (peak - 0.7)
    if extra is not None:
        vol += extra
    return nib.Nifti1Image(vol, np.diag([-4.0, -4.0, 4.0, 1.0]))


def test_two_equal_lesions_on_one_slice_are_ambiguous_not_guessed():
    pet = _blobs([(10, 20, 30), (30, 20, 30)], peak=6.0)
    (r,) = weak_label(parse_report("Focal uptake, SUVmax 6.0 (image 30)."), pet)
    assert r["status"] == "ambiguous" and "2 lesions match" in r["reason"]
    # The side in the sentence settles it (i = 10 is the patient's right in an LPS grid).
    (r,) = weak_label(parse_report("Focal right uptake, SUVmax 6.0 (image 30)."), pet)
    assert r["status"] == "located" and r["peak_voxel"] == [10, 20, 30] and r["confidence"] >= 0.8


def test_long_low_uptake_structure_is_physiological():
    extra = np.zeros((40, 40, 60), np.float32)
    extra[18:22, 18:22, 5:55] = 3.0  # a 200 mm column of SUV ~3.7 (think ureter / vessel)
    extra[20, 20, 30] = 3.5  # its single hottest voxel, SUV 4.2
    pet = nib.Nifti1Image(np.full((40, 40, 60), 0.7, np.float32) + extra, np.diag([-4.0, -4.0, 4.0, 1.0]))
    (r,) = weak_label(parse_report("Uptake, SUVmax 4.2 (image 30)."), pet)
    assert r["status"] == "not_found" and "physiological" in r["reason"]


def test_fixed_fraction_method(cases):
    case, les = _first_located(cases)
    results = weak_label(parse_report(case.report), case.pet_image(), config=WeakLabelConfig(method="fixed"))
    r = _result_for(les, results)
    assert r["status"] == "located"
    assert case.suv[r["_mask"]].min() >= 0.5 * r["peak_suv"] - 1e-5


def test_config_validation():
    for kwargs in ({"slice_origin": "top"}, {"slice_base": 2}, {"method": "otsu"}, {"fraction": 1.5}):
        with pytest.raises(InputError):
            WeakLabelConfig(**kwargs)


def test_run_weaklabel_files_and_bad_inputs(tmp_path, cases):
    case = cases[2]
    d = write_case(case, tmp_path / "case")
    summary = run_weaklabel(d / "report.txt", d / "SUV.nii.gz", tmp_path / "out", ct=d / "CTres.nii.gz")
    located = [f for f in summary["findings"] if f["status"] == "located"]
    assert located and all(f["mask"] for f in located)
    for f in located:
        m = nib.load(f["mask"])
        assert np.allclose(m.affine, case.affine) and m.get_data_dtype() == np.uint8
        assert np.asarray(m.dataobj)[tuple(f["peak_voxel"])] == 1
    assert json.loads((tmp_path / "out" / "findings.json").read_text()) == summary

    (tmp_path / "empty.txt").write_text("FINDINGS: unremarkable study.\n")
    with pytest.raises(InputError, match="no findings"):
        run_weaklabel(tmp_path / "empty.txt", d / "SUV.nii.gz", tmp_path / "o2")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20), np.float32), np.eye(4)), str(flat))
    with pytest.raises(InputError, match="3D"):
        run_weaklabel(d / "report.txt", flat, tmp_path / "o3")
    nan = tmp_path / "nan.nii.gz"
    data = case.suv.copy()
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, case.affine), str(nan))
    with pytest.raises(InputError, match="NaN"):
        run_weaklabel(d / "report.txt", nan, tmp_path / "o4")
    small_ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(case.ct[:, :, :32], case.affine), str(small_ct))
    with pytest.raises(InputError, match="does not match the PET grid"):
        run_weaklabel(d / "report.txt", d / "SUV.nii.gz", tmp_path / "o5", ct=small_ct)
    with pytest.raises(InputError, match="report file not found"):
        run_weaklabel(tmp_path / "none.txt", d / "SUV.nii.gz", tmp_path / "o6")


def test_misquoted_sentences_are_not_placed_elsewhere():
    n = 0
    for i in range(3):
        case = make_case(seed=8, index=i, report_errors=1.0, **SMALL)
        results = weak_label(parse_report(case.report), case.pet_image())
        for les in case.truth["lesions"]:
            if les["expect"] != "not_found":
                continue
            n += 1
            assert (les["stated_suvmax"], les["stated_side"]) != (les["suvmax"], les["side"])
            for r in results:
                if r["slice"] == les["slice"] and r["suvmax"] == les["stated_suvmax"]:
                    assert r["status"] != "located" or case.seg[tuple(r["peak_voxel"])] == les["label"]
    assert n >= 3


def test_weaklabel_on_a_dicom_series(tmp_path):
    from petct_helpers import expected_suv, write_pet_series

    # 12 slices of 24x24: background 1000 Bq/mL, one hot blob peaking on slice index 4 (k = 4).
    bq = np.full((12, 24, 24), 1000.0)
    blob = np.zeros_like(bq)
    blob[4, 10, 14] = 1.0
    blob = ndimage.gaussian_filter(blob, 1.2)
    bq += blob / blob.max() * 20000.0
    folder = write_pet_series(tmp_path / "pet", np.round(bq).astype(np.uint16), slopes=np.ones(12))
    peak_suv = float(expected_suv(np.round(bq)).max())
    # Slices 3 mm apart with z increasing: slice 1 counted from the head is index 11, so k = 4 is image 8.
    (tmp_path / "r.txt").write_text(f"Focal uptake, SUVmax {peak_suv:.1f} (image 8).\n")
    summary = run_weaklabel(tmp_path / "r.txt", folder, tmp_path / "out")
    (f,) = summary["findings"]
    assert f["status"] == "located", f["reason"]
    assert f["peak_voxel"] == [14, 10, 4]  # [column, row, slice]
    assert summary["suv"]["time_reference"] == "SeriesTime"
