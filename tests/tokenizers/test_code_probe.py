"""scripts/code_probe.py, scripts/decoder_oracle.py: what a binary tokenizer's codes hold, by the judge."""

import json

import pytest
import torch


def test_probe_shapes(load_script):
    probe = load_script("code_probe").CodeProbe(32, width=16)
    out = probe(torch.randn(5, 32, 8, 8))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "shape": (5, 9, 9),
        "colour": (5, 9, 9),
        "size": (5, 9, 3),
    }


@pytest.mark.slow
def test_probe_and_judge_counts_agree(load_script, capsys):
    assert (
        load_script("code_probe").main(["--train", "256", "--n", "64", "--epochs", "2", "--threads", "2"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["test_scenes"] == 64 and 0 <= out["probe_scenes"] <= 1
    # Every scene the judge misreads is either read right by the probe or misread by both.
    assert out["judge_misread"] == out["of_them_probe_reads_right"] + out["both_misread"]
    # The judge's half is scripts/judge_errors.py's reading of the same 64 reconstructions.
    assert load_script("judge_errors").main(["--model", "bin-f8-64", "--n", "64", "--split", "test"]) == 0
    judged = json.loads(capsys.readouterr().out)
    assert round(out["judge_on_reconstructions_scenes"] * 64) == round(judged["scenes"] * 64)
    assert out["judge_misread"] == round((1 - judged["scenes"]) * 64)


@pytest.mark.slow
def test_decoder_oracle_reports_before_and_after(load_script, capsys):
    """scripts/decoder_oracle.py: the untouched decoder's reading matches judge_errors'; the counts add up."""
    assert load_script("decoder_oracle").main(["--steps", "2", "--batch", "8", "--n", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_scenes"] == 64 and out["steps"] == 2
    for key in ("before", "oracle"):
        assert out[key]["misread"] == round((1 - out[key]["scenes"]) * 64)
        assert sum(out[key]["wrong"].values()) >= out[key]["misread"]
    assert 0 <= out["misread_by_both"] <= min(out["before"]["misread"], out["oracle"]["misread"])
    assert load_script("judge_errors").main(["--model", "bin-f8-64", "--n", "64", "--split", "test"]) == 0
    judged = json.loads(capsys.readouterr().out)
    assert out["before"]["misread"] == round((1 - judged["scenes"]) * 64)
    assert out["before"]["wrong"] == judged["wrong_attribute"]
