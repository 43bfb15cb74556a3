"""scripts/judge_errors.py: where the shapes judge goes wrong, by background, object count and shape."""

import json


def test_counts_scenes_backgrounds_and_confusions(load_script, capsys, tmp_path):
    script = load_script("judge_errors")
    assert script.main(["--blur", "0.5", "--n", "64", "--split", "test"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["n"] == 64 and clean["scenes"] == 1.0 and clean["confusions"] == []
    assert set(clean["by_background"]) <= {"black", "grey", "striped", "checkered", "noisy"}
    assert set(clean["by_objects"]) <= {"1", "2", "3"}
    # A blur that wipes 12-pixel shapes out: the judge misreads scenes, and says which shapes.
    grid = tmp_path / "errors.png"
    assert script.main(["--blur", "6.0", "--n", "64", "--split", "test", "--grid", str(grid)]) == 0
    smeared = json.loads(capsys.readouterr().out)
    assert smeared["scenes"] < 0.5 and smeared["confusions"]
    wrong = sum(n for _, _, n in smeared["confusions"])
    assert wrong > 0 and all(isinstance(t, str) and isinstance(r, str) for t, r, _ in smeared["confusions"])
    by_bg = smeared["by_background"]
    assert min(by_bg.values()) <= smeared["scenes"] <= max(by_bg.values())
    assert sum(smeared["wrong_attribute"].values()) >= wrong  # a wrong object has >= 1 wrong attribute
    assert smeared["wrong_attribute"]["shape"] >= sum(n for t, r, n in smeared["confusions"] if t != r) > 0
    # The grid: 16 pairs (64 scenes, fewer than half right), 8 per row, 4x enlarged with 4-pixel gaps.
    from PIL import Image

    assert smeared["grid"] == str(grid) and Image.open(grid).size == (8 * 256 + 9 * 4, 4 * 256 + 5 * 4)
    assert "grid" not in clean


def test_percept_reports_its_view_of_the_judges_errors(load_script, capsys):
    script = load_script("judge_errors")
    assert (
        script.main(["--model", "bin-f8-64", "--percept", "percept-shapes64", "--n", "64", "--split", "test"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    p = out["percept"]
    wrong = round((1 - out["scenes"]) * out["n"])
    assert p["name"] == "percept-shapes64" and len(p["kl_on_judge_misread"]) == wrong
    assert 0 <= p["of_them_judge_misread"] <= min(wrong, p["scenes_read_differently"]) <= out["n"]
    assert 0 <= p["kl_median"] < 1 and all(v >= 0 for v in p["kl_on_judge_misread"])
