"""scripts/read_originals.py: how well a shapes classifier reads a split's original scenes."""

import json


def test_reads_originals_with_the_judge_and_the_perceptual_network(load_script, capsys):
    script = load_script("read_originals")
    assert script.main(["--model", "judge-shapes64", "--split", "heldout", "--n", "64"]) == 0
    judge = json.loads(capsys.readouterr().out)
    assert judge["n"] == 64 and judge["split"] == "heldout"
    assert judge["scene_exact"] == 1.0  # the judge reads every held-out original (mmtok eval judge)
    assert script.main(["--model", "percept-shapes64", "--split", "heldout", "--n", "64"]) == 0
    percept = json.loads(capsys.readouterr().out)
    # The palette-trained perceptual network misreads held-out shape-colour pairs: measured 84.3% of
    # all 2000 scenes, 92.1% of objects (scripts/read_originals.py --model percept-shapes64).
    assert percept["n"] == 64 and percept["scene_exact"] < 0.95 < judge["scene_exact"]
