"""End to end: a tiny xAR trained by the trainer on cached kl-f8-64 latents, then `mmtok generate`."""

import json

import pytest
import torch
from PIL import Image

from mmtok.cli import main
from mmtok.errors import InputError
from mmtok.generation.pipeline import GenerationPipeline


def test_pipeline_generates_images_and_a_manifest(tiny_xar, tmp_path):
    pipe = GenerationPipeline(tiny_xar)
    seen = []
    result = pipe(prompt="a small red circle in the middle", n=3, seed=1, steps=2,
                  progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert len(result.images) == 3 and result.images[0].shape == (3, 64, 64)
    assert all(-1 <= float(im.min()) and float(im.max()) <= 1 for im in result.images)
    assert seen[-1] == (4, 4)  # 4 cell entities, one batch
    again = pipe(prompt="a small red circle in the middle", n=3, seed=1, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(result.images, again.images, strict=True))
    manifest = GenerationPipeline.save(result, tmp_path / "out")
    assert manifest["settings"]["seed"] == 1 and len(manifest["images"]) == 3
    assert Image.open(manifest["images"][0]).size == (64, 64)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]["steps"] == 2


def test_pipeline_refuses_bad_settings(tiny_xar):
    pipe = GenerationPipeline(tiny_xar)
    for kwargs, match in [
        ({"prompt": "  "}, "empty"),
        ({"prompt": "red " * 60}, "tokens long"),
        ({"class_label": 3}, "text-conditional"),
        ({}, "exactly one"),
        ({"prompt": "a red circle", "n": 0}, "number of images"),
        ({"prompt": "a red circle", "steps": 0}, "steps"),
        ({"prompt": "a red circle", "cfg": -1.0}, "guidance"),
    ]:
        with pytest.raises(InputError, match=match):
            pipe(**kwargs)


def test_generate_cli(tiny_xar, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["generate", "--model", str(tiny_xar), "--prompt", "a blue square", "-n", "2",
                 "--steps", "2", "--out", str(out), "--json"])  # fmt: skip
    assert code == 0
    manifest = json.loads(capsys.readouterr().out)
    assert len(manifest["images"]) == 2 and (out / "image_001.png").is_file()
    assert main(["generate", "--model", str(tiny_xar), "--prompt", "", "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["generate", "--model", "kl-f8-64", "--prompt", "x"]) == 2  # not a generator


def test_eval_generation_on_the_tiny_model(tiny_xar):
    from mmtok.eval.generation import _swap_two, evaluate_generation, wilson

    lo, hi = wilson(90, 100)
    assert lo < 0.9 < hi and 0.8 < lo and hi < 0.96
    truth = {
        "shape": torch.tensor([[1, 0, 2]]),
        "colour": torch.tensor([[3, 0, 4]]),
        "size": torch.tensor([[1, 0, 2]]),
    }
    swapped = _swap_two(truth)
    assert swapped["shape"].tolist() == [[2, 0, 1]] and swapped["colour"].tolist() == [[4, 0, 3]]
    m = evaluate_generation(str(tiny_xar), n=4, steps=1, cfg=1.0, max_objects=2, progress=False)
    assert set(m) >= {"seen/1obj", "seen/2obj", "heldout/1obj", "heldout/2obj", "judge_fid"}
    for key in ("seen/1obj", "heldout/2obj"):
        entry = m[key]
        assert entry["exact"]["n"] == 4 and 0 <= entry["exact"]["rate"] <= 1
        assert entry["colour"]["n"] == 4 * int(key[-4])  # one per object
    assert "swapped" in m["seen/2obj"] and m["judge_fid"] > 0
    assert m["seen/2obj"]["place"]["n"] == 8 and m["seen/2obj"]["count"]["n"] == 4
    assert 0 <= m["heldout/1obj"]["all_anywhere"]["rate"] <= 1


def test_binding_diagnostics_tell_placement_from_drawing():
    from mmtok.eval.generation import _found_anywhere

    def slots(**objects):  # slot index -> (shape, colour, size)
        out = {k: torch.zeros(1, 9, dtype=torch.long) for k in ("shape", "colour", "size")}
        for slot, (sh, co, si) in objects.items():
            i = int(slot[1:])
            out["shape"][0, i], out["colour"][0, i], out["size"][0, i] = sh, co, si
        return out

    truth = slots(s0=(1, 3, 1), s8=(2, 4, 2))
    # Both objects drawn, each in the other's slot: found anywhere, though not in place.
    assert _found_anywhere(truth, slots(s0=(2, 4, 2), s8=(1, 3, 1)))[0].nonzero().flatten().tolist() == [0, 8]
    # One right object, one with the wrong colour elsewhere; a drawn object is matched only once.
    found = _found_anywhere(truth, slots(s4=(1, 3, 1), s5=(2, 5, 2)))
    assert found[0].nonzero().flatten().tolist() == [0]
    twins = slots(s0=(1, 3, 1), s1=(1, 3, 1))
    assert _found_anywhere(twins, slots(s4=(1, 3, 1)))[0].sum() == 1


def test_unknown_words_are_named_in_a_note_everywhere_the_result_goes(tiny_xar, tmp_path, capsys):
    """A prompt with words outside the caption grammar still generates; the result, the manifest, the
    CLI (stderr, or --json) and a batch record name the words and the vocabulary."""
    pipe = GenerationPipeline(tiny_xar)
    result = pipe(prompt="an orange pentagon at the top", n=1, steps=1)
    assert len(result.images) == 1
    assert result.note.startswith("not understood: 'pentagon';") and "circle" in result.note
    assert pipe(prompt="an orange star at the top", n=1, steps=1).note is None
    manifest = GenerationPipeline.save(result, tmp_path / "gen")
    assert manifest["note"] == result.note
    assert main(["generate", "--model", str(tiny_xar), "--prompt", "a photo of a cat", "-n", "1",
                 "--steps", "1", "--out", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert "note: not understood: 'photo', 'cat'" in capsys.readouterr().err
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"task": "generate", "model": str(tiny_xar), "prompt": "a green hexagon",
                                "n": 1, "steps": 1}) + "\n")  # fmt: skip
    assert main(["batch", str(jobs), "--out", str(tmp_path / "batch")]) == 0
    record = json.loads((tmp_path / "batch" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["result"]["note"].startswith("not understood: 'hexagon'")


def test_generate_help_lists_the_vocabulary(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "words they know" in out and "triangle" in out and "turquoise" in out
