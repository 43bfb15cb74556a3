"""`mmtok compress` and `mmtok eval compress`: results, overlay, one-line errors (exit 2); the shipped
relevance predictor loads; synthetic documents."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmtok import cli, hub
from mmtok.clip.model import LightCLIP
from mmtok.compression.cli import evaluate, flatten, ideal_speedup
from mmtok.compression.document import make_page
from mmtok.compression.explain import ExplainPredictor
from mmtok.compression.pipeline import CompressPipeline


@pytest.fixture
def tiny(weights_dir):
    torch.manual_seed(0)
    hub.save(LightCLIP(arch="lightclip-tiny"), weights_dir / "tiny-clip")  # ViT: 4x4 tokens, 1 block, 2 heads
    hub.save(ExplainPredictor(heads=2, width=4, depth=2, clip="tiny-clip"), weights_dir / "tiny-explain")
    return "tiny-clip", "tiny-explain"


@pytest.fixture
def scene(tmp_path):
    path = tmp_path / "scene.png"
    pixels = np.random.default_rng(0).integers(0, 256, (80, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _main(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("method", ["tcc", "explain", "tome", "random", "pool"])
def test_compress_json_and_overlay(method, tiny, scene, tmp_path, capsys):
    model, pred = tiny
    overlay = tmp_path / "out" / "overlay.png"
    code, out, _ = _main(["compress", str(scene), "--model", model, "--predictor", pred, "--method", method,
                          "--keep", "0.5", "--labels", "a red circle", "a blue square", "a star",
                          "--out", str(overlay), "--json"], capsys)  # fmt: skip
    assert code == 0
    r = json.loads(out)
    assert r["tokens_total"] == 16
    assert r["tokens_kept"] == (8 if method != "pool" else 8)
    assert len(r["top_before"]) == 3 and len(r["top_after"]) == 3
    assert sum(t["prob"] for t in r["top_before"]) == pytest.approx(1, abs=1e-4)
    assert r["layer"] == (0 if method == "explain" else 1)
    assert r["seconds_compressed"] > 0 and -1 <= r["cosine"] <= 1 + 1e-6
    assert Image.open(overlay).size == (256, 256)


def test_compress_text_output(tiny, scene, capsys):
    model, _ = tiny
    code, out, _ = _main(["compress", str(scene), "--model", model, "--labels", "a", "b"], capsys)
    assert code == 0 and "kept 8/16 tokens" in out and "before:" in out and "after:" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--keep", "0"], "--keep"),
        (["--keep", "1.5"], "--keep"),
        (["--keep", "half"], "--keep"),
        (["--method", "magic"], "invalid choice"),
        (["--labels", "  "], "labels"),
        (["--top", "0"], "top"),
        (["--method", "explain", "--layer", "2"], "layer must be 0"),
        (["--layer", "7"], "layer"),
        (["--model", "no-such-model"], "unknown model"),
    ],
)
def test_compress_bad_inputs_exit_2_with_one_line(extra, message, tiny, scene, capsys):
    model, pred = tiny
    argv = ["compress", str(scene), "--model", model, "--predictor", pred, "--labels", "a", "b", *extra]
    if "--model" in extra:
        argv = ["compress", str(scene), *extra]
    code, _, err = _main(argv, capsys)
    assert code == 2
    assert message in err
    if "usage:" not in err:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_compress_bad_files_exit_2(tiny, tmp_path, capsys):
    model, _ = tiny
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    for path in (tmp_path / "missing.png", broken, text):
        code, _, err = _main(["compress", str(path), "--model", model, "--labels", "a"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and path.name in err


def test_pipeline_api(tiny):
    model, pred = tiny
    pipe = CompressPipeline(model, predictor=pred)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[20:40, 20:40] = 255
    out = pipe.run(Image.fromarray(image), method="tome", keep=0.25, labels=["a", "b"])
    assert out["tokens_kept"] == 4 and isinstance(out["overlay"], Image.Image)
    out = pipe.run(torch.zeros(3, 64, 64), method="tcc", keep=1.0, labels=["a", "b"])
    assert out["tokens_kept"] == 16 and out["cosine"] == pytest.approx(1, abs=1e-6) and "density" in out
    assert out["top_before"] == out["top_after"]


def test_eval_compress_small_run(tiny):
    model, pred = tiny
    result = evaluate(
        model, pred, n=8, keeps=(1.0, 0.5), methods=("tcc", "random@1", "explain", "random@0"),
        warmup=0, runs=1, batch=4, resolutions=(64,), doc_pages=2, progress=False,
    )  # fmt: skip
    same = result["accuracy"]["tcc"]["1.0"]  # keep 1: the full tower's predictions (random tiny model)
    assert same["agreement"] == 1.0 and same["object_acc"] == result["full"]["object_acc"]
    row = result["speed"]["64"]["explain"]["0.5"]
    assert row["tokens_left"] == 8 and row["ideal"] == pytest.approx(2.0)
    assert result["documents"]["crops"] == 24
    flat = flatten(result)
    assert "tcc@0.5/acc_retained" in flat and "target/tcc_retained_ge_0.96" in flat
    json.dumps(flat)
    assert ideal_speedup(4, 1, 0.5) == pytest.approx(1.6)


def test_documents_have_known_ink():
    page = make_page(3)
    assert page.image.shape == (3, 192, 256) and page.ink.shape == (12,)
    assert page.ink.min() >= 0 and page.ink.max() < 0.5
    cells = (page.image[0] < 0).float().view(3, 64, 4, 64).mean((1, 3)).flatten().numpy()
    np.testing.assert_allclose(cells, page.ink, atol=1e-6)
    assert torch.equal(make_page(3).image, page.image)


def test_shipped_predictor_loads():
    model = hub.load("explain-shapes64")
    assert isinstance(model, ExplainPredictor) and model.task == "compress"
    probs = torch.full((1, 4, 64, 64), 1 / 64)
    assert model(probs, (8, 8)).shape == (1, 64)
    files = hub.resolve("explain-shapes64")
    assert (files / "README.md").is_file() and (files / "metrics.json").is_file()
    assert (files / "model.safetensors").stat().st_size < 25 * 2**20


def test_eval_compress_is_wired_into_mmtok_eval(capsys):
    code, _, err = _main(["eval", "compress", "--model", "a", "--model", "b"], capsys)
    assert code == 2 and "exactly one --model" in err and len(err.strip().splitlines()) == 1
