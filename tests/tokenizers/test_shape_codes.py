"""scripts/shape_codes.py: small shapes through the shipped binary tokenizer, codes and judge."""

import json


def test_small_diamond_and_cross_get_different_codes(load_script, tmp_path, capsys):
    script = load_script("shape_codes")
    png = tmp_path / "pair.png"
    assert script.main(["--pair", "diamond", "cross", "--png", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bits_per_image"] == 8 * 8 * 32  # 32 bits per position since stage 6
    differing = out["bits_differing_per_slot"]
    assert len(differing) == 9 and all(0 < n < 64 for n in differing)
    # One small object alone on black: the judge reads the reconstructions of every shape.
    assert len(out["judge_right"]) == 8 and sum(out["judge_right"].values()) >= 68
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A shape against itself differs in no bit.
    assert script.main(["--pair", "star", "star"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_differing_per_slot"] == [0] * 9
