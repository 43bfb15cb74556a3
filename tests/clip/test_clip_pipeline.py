"""`mmtok clip classify` / `mmtok clip search`: pipeline results, embedding cache, one-line errors."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmtok import hub
from mmtok.clip.cli import add_commands
from mmtok.clip.model import LightCLIP
from mmtok.clip.pipeline import ClipPipeline, prepare
from mmtok.errors import InputError, MmtokError


@pytest.fixture
def tiny(weights_dir):
    torch.manual_seed(0)
    hub.save(LightCLIP(arch="lightclip-tiny"), weights_dir / "tiny-clip")
    return "tiny-clip"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        pixels = rng.integers(0, 256, (48 + 16 * i, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        paths.append(folder / name)
    (folder / "notes.txt").write_text("not an image, and not an image suffix: ignored")
    return folder, paths


def _run(argv, capsys):
    parser = argparse.ArgumentParser(prog="mmtok")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.handler(args)
    return code, capsys.readouterr().out


def test_prepare_resizes_shorter_side_and_centre_crops():
    image = torch.linspace(-1, 1, 100)[None, None, :].expand(3, 50, 100)
    out = prepare(image, 64)
    assert out.shape == (3, 64, 64)
    assert out[0, 0, 0] > -1 and out[0, 0, -1] < 1  # the left and right ends were cropped away


def test_classify_json(tiny, images, capsys):
    _, paths = images
    code, out = _run(["clip", "classify", *map(str, paths), "--labels", "a red circle", "a blue square",
                      "--model", tiny, "--json"], capsys)  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert [r["file"] for r in result["results"]] == [str(p) for p in paths]
    for r in result["results"]:
        assert sum(r["scores"].values()) == pytest.approx(1, abs=1e-5)
        assert r["label"] == max(r["scores"], key=r["scores"].get)


def test_familiarity_flags_a_photo_but_not_the_test_beds(tmp_path):
    """The shipped CLIP's softmax names a shape for any image; familiarity says when that means little:
    held-out shapes scenes and test digits (not the threshold's own images) pass, photos do not."""
    import skimage.data

    from mmtok.data import build_dataset, to_uint8

    pipe = ClipPipeline("lightclip-shapes64")
    files = []
    for name, split, i in [("shapes", "heldout", 300), ("shapes", "heldout", 301), ("digits", "test", 200)]:
        files.append(tmp_path / f"{name}_{i}.png")
        Image.fromarray(to_uint8(build_dataset(name, split, resolution=64)[i]["image"])).save(files[-1])
    for name in ("astronaut", "chelsea", "coffee"):
        files.append(tmp_path / f"{name}.png")
        Image.fromarray(getattr(skimage.data, name)()).save(files[-1])
    results = pipe.classify(files, ["a red circle", "a blue square"])
    assert [r["familiar"] for r in results] == [True, True, True, False, False, False]
    assert all(r["familiarity"] < r["familiar_threshold"] - 0.1 for r in results[3:])  # not borderline


def test_classify_bad_inputs_are_one_line_errors(tiny, images, tmp_path, capsys):
    _, paths = images
    pipe = ClipPipeline(tiny)
    with pytest.raises(InputError, match="at least one text"):
        pipe.classify(paths, [])
    with pytest.raises(InputError, match="non-empty"):
        pipe.classify(paths, ["a red circle", "  "])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="broken.png") as err:
        pipe.classify([paths[0], bad], ["a red circle"])
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_:  # argparse: --labels needs at least one value
        _run(["clip", "classify", str(paths[0]), "--labels"], capsys)
    assert exit_.value.code == 2
    with pytest.raises(MmtokError, match="unknown model"):
        ClipPipeline("no-such-clip")


def test_search_ranks_and_caches(tiny, images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMTOK_CACHE", str(tmp_path / "cache"))
    folder, paths = images
    pipe = ClipPipeline(tiny)
    first = pipe.search(folder, "a red circle", top=2)
    assert first["indexed"] == 3 and first["embedded"] == 3 and len(first["results"]) == 2
    scores = [r["score"] for r in first["results"]]
    assert scores == sorted(scores, reverse=True)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    again = pipe.search(folder, "a red circle", top=2)
    assert again["embedded"] == 0 and again["results"] == first["results"]  # all from the cache
    # A changed file and an unreadable one: only the changed file is embedded again, the bad one skipped.
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(paths[1])
    (folder / "bad.png").write_bytes(b"garbage")
    third = pipe.search(folder, "a red circle", top=10)
    assert third["embedded"] == 1 and third["indexed"] == 3
    assert [s["path"] for s in third["skipped"]] == [str(folder / "bad.png")]
    code, out = _run(["clip", "search", "--images", str(folder), "--text", "a red circle", "--top", "1",
                      "--model", tiny, "--json"], capsys)  # fmt: skip
    assert code == 0 and len(json.loads(out)["results"]) == 1


def test_search_bad_inputs(tiny, tmp_path):
    pipe = ClipPipeline(tiny)
    with pytest.raises(InputError, match="not a folder"):
        pipe.search(tmp_path / "missing", "a red circle")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        pipe.search(tmp_path / "empty", "a red circle")
    with pytest.raises(InputError, match="--top"):
        pipe.search(tmp_path / "empty", "a red circle", top=0)


def test_mmtok_cli_exit_codes(tiny, images, tmp_path, capsys):
    from mmtok import cli

    _, paths = images
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert cli.main(["clip", "classify", str(bad), "--labels", "a red circle", "--model", tiny]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmtok: error:") and "bad.png" in err and err.count("\n") == 1
    assert cli.main(["clip", "classify", str(paths[0]), "--labels", " ", "--model", tiny]) == 2
    assert cli.main(["clip", "classify", str(paths[0]), "--labels", "a red circle", "--model", tiny]) == 0
