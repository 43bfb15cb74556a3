"""scripts/judge_errors.py: where the shapes judge goes wrong, by background, object count and shape."""

import json


def test_counts_scenes_backgrounds_and_confusions(load_script, capsys):
    script = load_script("judge_errors")
    assert script.main(["--blur", "0.5", "--n", "64", "--split", "test"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["n"] == 64 and clean["scenes"] == 1.0 and clean["confusions"] == []
    assert set(clean["by_background"]) <= {"black", "grey", "striped", "checkered", "noisy"}
    assert set(clean["by_objects"]) <= {"1", "2", "3"}
    # A blur that wipes 12-pixel shapes out: the judge misreads scenes, and says which shapes.
    assert script.main(["--blur", "6.0", "--n", "64", "--split", "test"]) == 0
    smeared = json.loads(capsys.readouterr().out)
    assert smeared["scenes"] < 0.5 and smeared["confusions"]
    wrong = sum(n for _, _, n in smeared["confusions"])
    assert wrong > 0 and all(isinstance(t, str) and isinstance(r, str) for t, r, _ in smeared["confusions"])
    by_bg = smeared["by_background"]
    assert min(by_bg.values()) <= smeared["scenes"] <= max(by_bg.values())
