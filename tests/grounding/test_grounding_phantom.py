import json

import nibabel as nib
import numpy as np
import pytest
from petct_helpers import SMALL

from mmtok.errors import InputError
from mmtok.grounding import io
from mmtok.grounding.phantom import make_case, write_case
from mmtok.grounding.reports import parse_report


@pytest.fixture(scope="module")
def case():
    return make_case(seed=3, index=1, **SMALL)


def test_same_seed_same_case_and_different_index_differs(case):
    again = make_case(seed=3, index=1, **SMALL)
    assert np.array_equal(again.suv, case.suv) and again.report == case.report
    other = make_case(seed=3, index=2, **SMALL)
    assert not np.array_equal(other.suv, case.suv)


def test_grid_orientation_and_truth_consistency(case):
    assert case.suv.shape == case.ct.shape == case.seg.shape == (48, 48, 64)
    assert io.axis_codes(case.affine) == ("L", "P", "S") and case.truth["axis_codes"] == "LPS"
    lesions = case.truth["lesions"]
    assert 1 <= len(lesions) <= 4
    assert sorted(np.unique(case.seg).tolist()) == list(range(len(lesions) + 1))
    for les in lesions:
        mask = case.seg == les["label"]
        peak = tuple(les["peak_voxel"])
        assert mask[peak] and case.suv[peak] == pytest.approx(case.suv[mask].max())
        assert abs(les["suvmax"] - case.suv[mask].max()) <= 0.05 + 1e-6  # rounded to one decimal
        assert 2.5 <= les["suvmax"] <= 25
        # Slice numbers count from the head (k = nz - 1 is the head end here), 1-based.
        assert les["slice"] == 64 - les["peak_voxel"][2]
        assert les["sentence"] in case.report


def test_tissue_values_are_in_realistic_ranges():
    c = make_case(seed=0, index=0)  # default 96x96x160 grid, 4 mm
    organ = c.truth["organ_suv"]
    assert 1.3 <= organ["liver"] <= 3.0  # EANM liver QC range
    assert 7 <= organ["brain"] <= 10 and 10 <= organ["bladder"] <= 40
    # CT: air outside, lungs around -800 HU, bone rim of the spine dense.
    assert c.ct[0, 0, 0] == -1000
    lung = c.ct[70, 48, int(0.64 * 159)]  # left lung centre
    assert -950 < lung < -600
    assert c.ct.max() > 700
    # PET noise: the liver centre's coefficient of variation is of the order of the set noise.
    liver = c.suv[30:36, 44:52, 72:78]
    assert 0.02 < liver.std() / liver.mean() < 0.25


def test_report_findings_match_truth(case):
    findings = parse_report(case.report)
    for les in case.truth["lesions"]:
        if les["expect"] != "located":
            continue
        match = [f for f in findings if f.suvmax == les["suvmax"] and f.slice == les["slice"]]
        assert len(match) == 1 and match[0].status == "ok"
        assert (match[0].side, match[0].organ) == (les["side"], les["organ"])


def test_write_case_autopet_layout(tmp_path, case):
    out = write_case(case, tmp_path / "c")
    assert {p.name for p in out.iterdir()} == {
        "SUV.nii.gz",
        "CTres.nii.gz",
        "SEG.nii.gz",
        "report.txt",
        "truth.json",
    }
    suv = nib.load(str(out / "SUV.nii.gz"))
    seg = nib.load(str(out / "SEG.nii.gz"))
    assert np.allclose(suv.affine, case.affine) and np.allclose(seg.affine, case.affine)
    assert seg.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(seg.dataobj), case.seg)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["lesions"] == case.truth["lesions"]


def test_bad_phantom_options():
    with pytest.raises(InputError, match="shape"):
        make_case(shape=(8, 8, 8))
    with pytest.raises(InputError, match="spacing"):
        make_case(spacing=(4, 0, 4))
