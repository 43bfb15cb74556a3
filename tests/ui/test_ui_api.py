"""The served UI through its HTTP API (``gradio_client`` against the real ``launch()``): every tab's
endpoint with good and bad inputs, and 20 simultaneous generate requests all answered."""

import socket

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from apps import gradio_app as app
from mmtok.data import build_dataset, to_uint8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo_app, url, _ = app.launch(port=_free_port(), prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False)
    demo_app.close() if hasattr(demo_app, "close") else None
    import gradio as gr

    gr.close_all()


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "scene.png"
    Image.fromarray(to_uint8(build_dataset("shapes", "heldout", resolution=64)[2]["image"])).save(path)
    return str(path)


def test_generate_endpoint(client):
    gallery, info = client.predict("xar-digits64", "", 3, 2, 0, 2, 3.0, api_name="/generate")
    assert len(gallery) == 2 and "2 image(s), " in info and "sampling" in info
    assert Image.open(gallery[0]["image"]).format == "PNG"
    with pytest.raises(AppError, match="unknown class 42"):
        client.predict("xar-digits64", "", 42, 1, 0, 2, 3.0, api_name="/generate")


def test_tokenize_endpoint(client, scene_png, tmp_path):
    orig, rec, info, grid = client.predict(handle_file(scene_png), "bin-f8-64", api_name="/tokenize")
    assert info.startswith("PSNR") and np.asarray(Image.open(rec)).shape == (64, 64, 3) and grid
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(AppError):
        client.predict(handle_file(str(fake)), "kl-f8-64", api_name="/tokenize")


def test_clip_endpoints(client, scene_png):
    plot, best = client.predict(handle_file(scene_png), "a red circle\na blue square", "lightclip-shapes64",
                                api_name="/clip_classify")  # fmt: skip
    assert best.startswith("Best: **")
    found = client.predict("a small green star", "lightclip-shapes64", 3, api_name="/clip_search")
    assert len(found) == 3
    with pytest.raises(AppError, match="label"):
        client.predict(handle_file(scene_png), "  ", "lightclip-shapes64", api_name="/clip_classify")


def test_petct_endpoints(client):
    report, slider, axial, coronal, status, picks = client.predict(0, api_name="/load_sample")
    assert "SUVmax" in report and "loaded" in status
    table, finding, mask, axial, coronal = client.predict(report, 40, api_name="/weaklabel")
    assert "located" in {row[1] for row in table["data"]} and mask.endswith(".nii.gz")
    with pytest.raises(AppError, match="report"):
        client.predict("  ", 40, api_name="/weaklabel")
    # Ground the first finding sentence with the shipped ConTEXTual Net 3D.
    from mmtok.grounding.reports import parse_report

    sentence = parse_report(report)[0].sentence
    slider, axial, coronal, mask, info = client.predict(sentence, "contextual3d-phantom", 40,
                                                        api_name="/ground_sentence")  # fmt: skip
    assert ("Match" in info and mask.endswith(".nii.gz")) or ("No lesion matches" in info and mask is None)
    with pytest.raises(AppError, match="empty"):
        client.predict("   ", "contextual3d-phantom", 40, api_name="/ground_sentence")


def test_twenty_simultaneous_generate_requests_are_all_answered(client):
    jobs = [client.submit("xar-digits64", "", i % 10, 1, i, 2, 3.0, api_name="/generate") for i in range(20)]
    results = [job.result(timeout=300) for job in jobs]
    assert len(results) == 20 and all(len(gallery) == 1 and "1 image(s)" in info for gallery, info in results)


def test_compress_endpoint(client, scene_png):
    overlay, info, table = client.predict(handle_file(scene_png), "lightclip-shapes64", "tome", 0.5, "",
                                          api_name="/compress")  # fmt: skip
    assert "32 of 64 tokens kept" in info and len(table["data"]) == 3
    with pytest.raises(AppError):
        client.predict(
            handle_file(scene_png), "lightclip-shapes64", "nonsense", 0.5, "", api_name="/compress"
        )


def test_the_api_lists_what_a_script_calls_and_nothing_else(client):
    """Viewer events (slider, finding pick), field toggles and the click stamps stay private."""
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == {"/generate", "/tokenize", "/clip_classify", "/clip_search", "/compress", "/load_sample",
                     "/load_upload", "/weaklabel", "/ground_sentence"}  # fmt: skip
