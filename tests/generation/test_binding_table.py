"""scripts/binding_table.py: eval JSONs side by side, bad arguments refused."""

import json


def _entry(rate, n=256):
    return {"rate": rate, "n": n, "ci95": [max(rate - 0.05, 0), min(rate + 0.05, 1)]}


def test_table_has_one_column_per_model_and_skips_missing_rows(load_script, tmp_path, capsys):
    bt = load_script("binding_table")
    a = {"m": {"seen/2obj": {"exact": _entry(0.1), "place": _entry(0.5)}, "judge_fid": 12.34}}
    b = {"m": {"seen/2obj": {"exact": _entry(0.3)}, "judge_fid": 8.0}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = tmp_path / "t.md"
    assert bt.main([f"before={tmp_path / 'a.json'}", f"after={tmp_path / 'b.json'}", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| group | figure | before | after |" in text
    assert "| seen/2obj | exact | 10.0% (5-15) | 30.0% (25-35) |" in text
    assert "| seen/2obj | place | 50.0% (45-55) | - |" in text
    assert "swapped" not in text and "| all | judge-FID | 12.3 | 8.0 |" in text
    assert bt.main(["no-equals-sign"]) == 2 and bt.main([f"x={tmp_path / 'missing.json'}"]) == 2
    assert "error:" in capsys.readouterr().err
