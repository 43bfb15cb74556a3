"""The web UI in a real browser (Debian chromium driven by Playwright): every tab, with a screenshot of
each (under ``$MMTOK_UI_SCREENSHOTS`` when set -- how ``docs/img/ui-*.png`` are made -- else a temp
folder)."""

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from apps import gradio_app as app
from mmtok.data import build_dataset, to_uint8

pytestmark = pytest.mark.ui

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="module")
def served():
    demo = app.build_demo()
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True,
                            max_file_size=app.MAX_UPLOAD, enable_monitoring=False)  # fmt: skip
    yield url
    demo.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MMTOK_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shot(page, shots: Path, name: str) -> None:
    path = shots / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served)
        yield page
        browser.close()


def test_petct_sample_and_weak_labels(page, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="PET/CT").click()
    page.locator("#pet-sample").click()
    expect(page.locator("#pet-status")).to_contain_text("loaded", timeout=60_000)
    expect(page.locator("#pet-report textarea")).to_have_value(re.compile("SUV"), timeout=10_000)
    page.locator("#pet-weaklabel").click()
    expect(page.locator("#pet-findings")).to_contain_text("located", timeout=60_000)
    # Ground one of the report's finding sentences with the shipped ConTEXTual Net.
    from mmtok.grounding.reports import parse_report

    if "contextual3d-phantom" not in app._models("grounding"):
        pytest.fail("weights/contextual3d-phantom is missing")
    findings = parse_report(page.locator("#pet-report textarea").input_value())
    sentence = max(findings, key=lambda f: f.suvmax or 0).sentence  # a lesion, not physiological uptake
    page.locator("#ground-text textarea").fill(sentence)
    page.locator("#ground-run").click()
    answered = re.compile("voxels|No lesion found")
    expect(page.locator("#ground-info")).to_contain_text(answered, timeout=180_000)
    _shot(page, shots, "petct")


def test_tokenize_upload(page, tmp_path, shots):
    from playwright.sync_api import expect

    path = tmp_path / "scene.png"
    Image.fromarray(to_uint8(build_dataset("shapes", "heldout", resolution=64)[1]["image"])).save(path)
    page.get_by_role("tab", name="Tokenize").click()
    page.locator("#tok-input input[type=file]").set_input_files(str(path))
    page.get_by_role("button", name="Tokenize", exact=True).click()
    expect(page.locator("#tok-info")).to_contain_text("PSNR", timeout=60_000)
    _shot(page, shots, "tokenize")


def test_clip_search(page, shots):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="CLIP").click()
    page.locator("#clip-search").click()
    expect(page.locator("#clip-gallery img").first).to_be_visible(timeout=90_000)
    _shot(page, shots, "clip")


def test_generate_digits(page, shots):
    from playwright.sync_api import expect

    if "xar-digits64" not in app._models("image-generator"):
        pytest.fail("weights/xar-digits64 is missing")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#gen-run").click()
    expect(page.locator("#gen-info")).to_contain_text("image(s) in", timeout=120_000)
    expect(page.locator("#gen-gallery img").first).to_be_visible(timeout=10_000)
    _shot(page, shots, "generate")


def test_compress_upload(page, tmp_path, shots):
    from playwright.sync_api import expect

    path = tmp_path / "scene.png"
    Image.fromarray(to_uint8(build_dataset("shapes", "heldout", resolution=64)[3]["image"])).save(path)
    page.get_by_role("tab", name="Compress").click()
    page.locator("#cmp-input input[type=file]").set_input_files(str(path))
    page.locator("#cmp-run").click()
    expect(page.locator("#cmp-info")).to_contain_text("tokens kept", timeout=60_000)
    expect(page.locator("#cmp-table")).to_contain_text("before", timeout=10_000)
    _shot(page, shots, "compress")
