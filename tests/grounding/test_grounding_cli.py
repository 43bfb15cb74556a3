import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from mmtok.errors import MmtokError
from mmtok.grounding.cli import add_commands, eval_weaklabel


def _run(argv):
    """Parse with a fresh parser holding our subcommands and call the handler, as mmtok's main does."""
    parser = argparse.ArgumentParser(prog="mmtok")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_phantom_then_weaklabel_json(tmp_path, capsys):
    out = tmp_path / "ph"
    assert (
        _run(["phantom", "--out", str(out), "-n", "2", "--seed", "4", "--shape", "48x48x64", "--json"]) == 0
    )
    listing = json.loads(capsys.readouterr().out)
    assert [c["dir"] for c in listing["cases"]] == [str(out / "case_0000"), str(out / "case_0001")]
    case = out / "case_0001"
    assert nib.load(str(case / "SUV.nii.gz")).shape == (48, 48, 64)
    truth = json.loads((case / "truth.json").read_text())
    argv = ["weaklabel", "--report", str(case / "report.txt"), "--pet", str(case / "SUV.nii.gz"),
            "--ct", str(case / "CTres.nii.gz"), "--out", str(tmp_path / "wl"), "--json"]  # fmt: skip
    assert _run(argv) == 0
    result = json.loads(capsys.readouterr().out)
    seg = np.asarray(nib.load(str(case / "SEG.nii.gz")).dataobj)
    for les in truth["lesions"]:
        if les["expect"] != "located":
            continue
        (f,) = [f for f in result["findings"] if f["suvmax"] == les["suvmax"] and f["slice"] == les["slice"]]
        assert f["status"] == "located" and seg[tuple(f["peak_voxel"])] == les["label"]
    # Plain-text output lists each finding.
    assert _run(argv[:-1]) == 0
    assert "SUVmax" in capsys.readouterr().out


def test_weaklabel_slice_options_reach_the_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    common = ["weaklabel", "--report", "r", "--pet", "p", "--out", "o"]
    args = parser.parse_args(common + ["--slice-origin", "foot", "--slice-base", "0", "--method", "fixed",
                                       "--fraction", "0.42"])  # fmt: skip
    assert (args.slice_origin, args.slice_base, args.method, args.fraction) == ("foot", 0, "fixed", 0.42)
    with pytest.raises(SystemExit):
        parser.parse_args(["weaklabel", "--report", "r", "--pet", "p", "--out", "o", "--slice-base", "2"])
    with pytest.raises(SystemExit):
        parser.parse_args(["phantom", "--out", "o", "--shape", "4x4"])


def test_weaklabel_bad_input_is_an_mmtok_error(tmp_path):
    with pytest.raises(MmtokError, match="report file not found"):
        _run(["weaklabel", "--report", str(tmp_path / "no.txt"), "--pet", "x", "--out", str(tmp_path)])


def test_suv_command(pet_series, tmp_path, capsys):
    folder, _, _ = pet_series
    assert _run(["suv", str(folder), "--out", str(tmp_path / "SUV.nii.gz"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["time_reference"] == "SeriesTime" and info["shape"] == [7, 6, 5]
    assert nib.load(str(tmp_path / "SUV.nii.gz")).shape == (7, 6, 5)


def test_eval_weaklabel_small():
    args = argparse.Namespace(n=3, seed=0, json=True, shape=(48, 48, 64))
    r = eval_weaklabel(args)
    assert r["cases"] == 3 and r["unambiguous_findings"] >= 3
    assert r["located_correct"] == 1.0 and r["wrong_high_confidence"] == 0
    assert 0.5 < r["mean_dice"] <= 1.0
    assert {"f1_suv_match", "f1_overlap", "f1_dice_0.5", "mean_fpv_ml", "mean_fnv_ml"} <= set(r)
    with pytest.raises(MmtokError):
        eval_weaklabel(argparse.Namespace(n=0, seed=0, json=True))


@pytest.mark.slow
def test_eval_weaklabel_meets_targets_on_40_cases():
    r = eval_weaklabel(argparse.Namespace(n=40, seed=11, json=True))
    assert r["located_correct"] >= 0.98 and r["wrong_high_confidence"] == 0 and r["mean_dice"] >= 0.8
