"""The web UI's handlers, called directly (fast): each tab's pipeline call, validation and output."""

from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from apps import gradio_app as app
from mmtok.data import build_dataset, to_uint8


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("ui") / "scene.png"
    Image.fromarray(to_uint8(build_dataset("shapes", "heldout", resolution=64)[0]["image"])).save(path)
    return str(path)


def test_build_demo_has_the_tabs():
    demo = app.build_demo()
    labels = {b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert {"Generate", "Tokenize", "CLIP", "Compress", "PET/CT"} <= labels


def test_tokenize_tab(scene_png, tmp_path):
    orig, rec, info, grid = app.tokenize(None, scene_png, "bin-f8-64")
    assert orig.shape == rec.shape == (64, 64, 3) and grid.shape == (64, 64, 3)
    assert info.startswith("PSNR") and float(info.split()[1]) > 20
    *_, grid = app.tokenize(None, scene_png, "kl-f8-64")
    assert grid is None  # continuous latents have no code grid
    bad = tmp_path / "fake.png"
    bad.write_text("not an image")
    with pytest.raises(gr.Error):
        app.tokenize(None, str(bad), "kl-f8-64")
    with pytest.raises(gr.Error, match="Upload"):
        app.tokenize(None, None, "kl-f8-64")


def test_petct_tab_sample_weaklabel_and_viewer():
    state, report, slider, axial, coronal, status, picks = app.load_sample(0)
    assert "SUVmax" in report and "loaded" in status
    assert picks.choices and all(str(c[0] if isinstance(c, tuple) else c) in report for c in picks.choices)
    n_axial = state["shape"][2]
    # Enlarged by a whole factor to at least VIEW_WIDTH px (a 96-voxel phantom is too small to read).
    assert axial.shape == (384, 384, 3) and coronal.shape == (4 * n_axial, 384, 3)
    assert (
        slider.value == (n_axial + 1) // 2
        and slider.maximum == n_axial
        and "1 = the top-most" in slider.label
    )
    state, rows, dropdown, mask_file = app.weaklabel(state, report)
    located = [r for r in rows if r[1] == "located"]
    assert located and mask_file.endswith(".nii.gz")
    import nibabel as nib

    mask = np.asarray(nib.load(mask_file).dataobj)
    assert mask.shape == state["shape"] and mask.sum() > 0
    # One finding: the slider jumps to its peak and the overlay shows its mask (green).
    choice = dropdown.choices[0][0] if isinstance(dropdown.choices[0], tuple) else dropdown.choices[0]
    n = int(choice.split(":")[0])
    state, slider, axial, coronal, nii = app.show_finding(state, choice)
    assert nii.endswith(".nii.gz") and (axial[..., 1] > axial[..., 0] + 60).any()
    # The slider speaks the report's numbering: the finding's row and the slider name the same image.
    assert slider.value == rows[n - 1][3]
    # The dropdown's reset after labelling (no pick) must leave the mask download alone.
    assert all(isinstance(v, type(gr.skip())) for v in app.show_finding(state, None))
    with pytest.raises(gr.Error, match="no findings"):
        app.weaklabel(state, "Nothing to see here.")


def test_petct_upload_is_validated_by_content(tmp_path):
    fake = tmp_path / "pet.nii.gz"
    fake.write_bytes(b"\x00" * 100)
    with pytest.raises(gr.Error, match="neither a NIfTI volume nor a zip"):
        app.load_upload(str(fake), None, "")
    with pytest.raises(gr.Error, match="missing or empty"):
        app.load_upload(str(tmp_path / "pet.png"), None, "")


def _case(tmp_path):
    from mmtok.grounding.phantom import make_case, write_case

    return write_case(make_case(3, 0, shape=(32, 32, 48), spacing=(8.0,) * 3), tmp_path / "case")


def test_petct_upload_any_name_zipped_dicom_and_ct_on_another_grid(tmp_path):
    import shutil
    import zipfile

    import nibabel as nib

    from mmtok.grounding.io import resample_to_pet

    case = _case(tmp_path)
    renamed = shutil.copy(case / "SUV.nii.gz", tmp_path / "pet-upload.bin")  # the content decides
    ct = nib.load(case / "CTres.nii.gz")
    aff = ct.affine.copy()
    aff[:3, :3] *= 2.0  # a coarser CT grid: resampled onto the PET grid, not refused
    coarse = nib.Nifti1Image(np.asarray(ct.dataobj)[::2, ::2, ::2].astype(np.float32), aff)
    nib.save(coarse, tmp_path / "ct.nii.gz")
    state, report, slider, axial, coronal, status, picks = app.load_upload(
        renamed, str(tmp_path / "ct.nii.gz"), (case / "report.txt").read_text()
    )
    assert "resampled" in status and state["shape"] == (32, 32, 48) and picks.choices
    resampled = np.asarray(nib.load(state["ct"]).dataobj)
    want = np.asarray(resample_to_pet(coarse, nib.load(case / "SUV.nii.gz")).dataobj)
    np.testing.assert_allclose(resampled, want, atol=1e-3)
    # A zipped DICOM series that is not a PET series is one clear message.
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("series/readme.txt", "no DICOM here")
    with pytest.raises(gr.Error, match="no DICOM PET"):
        app.load_upload(str(z), None, "")


def test_petct_grounding_a_sentence(tmp_path):
    import nibabel as nib
    import torch

    from mmtok import hub
    from mmtok.grounding.model import ContextualNet3D

    torch.manual_seed(0)
    net = ContextualNet3D(filters=(8, 16, 24), strides=(1, 2, 2), patch=(32, 32, 32), spacing_mm=8.0)
    with torch.no_grad():  # an untrained net biased to foreground, so that the mask is not empty
        net.unet.output_block.conv.conv.bias.copy_(torch.tensor([-1.0, 1.0]))
    model = str(hub.save(net, tmp_path / "tiny-ground"))
    case = _case(tmp_path)
    state, report, *_, picks = app.load_upload(
        str(case / "SUV.nii.gz"), str(case / "CTres.nii.gz"), (case / "report.txt").read_text()
    )
    choice = picks.choices[0][0] if isinstance(picks.choices[0], tuple) else picks.choices[0]
    sentence = app._pick_sentence(choice)
    assert sentence == choice and sentence in report
    state, slider, axial, coronal, nii, info = app.ground_sentence(None, state, sentence, model, 10)
    mask = np.asarray(nib.load(nii).dataobj) > 0
    assert mask.shape == (32, 32, 48) and mask.sum() > 0
    # The untrained net's one-voxel mask is not the lesion the sentence describes, and the sentence's
    # own SUVmax and image number say so: the page must not call it a match.
    confidence = float(info.split("(confidence ")[1].split(",")[0])
    assert info.startswith("**Probably another lesion**") and confidence >= 0.6 and " s)" in info
    assert "the sentence says SUVmax" in info and "this mask spans images" in info
    assert 1 <= slider.value <= 48 and f"on image {slider.value})" in info
    # A sentence that names no place the model was trained on is not presented as a match.
    state2, _, _, _, nii2, info2 = app.ground_sentence(None, state, "A banana.", model, 10)
    assert nii2 is None and state2["mask"] is None
    assert "No lesion matches this sentence" in info2 and "axillary node" in info2
    assert (axial[..., 1] > axial[..., 0] + 60).any() or (coronal[..., 1] > coronal[..., 0] + 60).any()
    assert app._pick_sentence("2: Left axillary node.") == "Left axillary node."
    assert not isinstance(app._pick_sentence(None), str)  # a reset dropdown keeps the typed sentence
    with pytest.raises(gr.Error, match="empty"):
        app.ground_sentence(None, state, "  ", model, 10)
    with pytest.raises(gr.Error, match="CT"):
        app.ground_sentence(None, dict(state, ct=None), sentence, model, 10)
    with pytest.raises(gr.Error, match="No grounding model"):
        app.ground_sentence(None, state, sentence, None, 10)


def test_generate_without_a_generator_is_a_message():
    with pytest.raises(gr.Error, match="No generator"):
        app.generate(None, None, "a red circle", 0, 1, 0, 2, 3.0)


def test_generate_tab(tiny_xar):
    from PIL import Image as PILImage

    seen = []
    paths, info = app.generate(None, str(tiny_xar), "a small red circle", 0, 2, 3, 2, 2.0,
                               progress=lambda *a, **k: seen.append(a))  # fmt: skip
    assert len(paths) == 2 and PILImage.open(paths[0]).format == "PNG" and "2 image(s)" in info
    assert seen  # the progress bar moved
    with pytest.raises(gr.Error, match="empty"):
        app.generate(None, str(tiny_xar), "   ", 0, 1, 0, 2, 2.0, progress=lambda *a, **k: None)


def test_clip_tab(scene_png):
    labels = "a red circle\na blue square\n\n a green star"
    frame, best = app.clip_classify(None, scene_png, labels, "clip-shapes64")
    assert list(frame["label"]) and abs(float(frame["probability"].sum()) - 1) < 1e-4 and len(frame) == 3
    assert best.startswith("Best: **")
    with pytest.raises(gr.Error, match="label"):
        app.clip_classify(None, scene_png, " \n ", "clip-shapes64")
    found = app.clip_search("a large yellow heart", "clip-shapes64", 4)
    assert len(found) == 4 and all(Path(p).is_file() for p, _ in found)
    scores = [float(s) for _, s in found]
    assert scores == sorted(scores, reverse=True)


def test_compress_tab(scene_png):
    overlay, info, rows = app.compress(None, scene_png, "lightclip-shapes64", "tcc", 0.5, "")
    assert overlay.ndim == 3 and overlay.shape[2] == 3 and overlay.shape[0] >= 64
    kept, total = (int(v) for v in info.split("**")[1].split(" tokens")[0].split(" of "))
    assert total == 64 and 0 < kept < total and len(rows) == 3
    assert rows[0][1] and 0 <= rows[0][2] <= 1 and 0 <= rows[0][4] <= 1
    _, info, rows = app.compress(
        None, scene_png, "lightclip-shapes64", "explain", 0.25, "a red circle\na blue square"
    )
    assert "explain" in info and {r[1] for r in rows} <= {"a red circle", "a blue square"}
    with pytest.raises(gr.Error, match="Upload"):
        app.compress(None, None, "lightclip-shapes64", "tcc", 0.5, "")
    with pytest.raises(gr.Error):
        app.compress(None, scene_png, "lightclip-shapes64", "tcc", 0.0, "")


def test_the_default_search_names_an_object_the_gallery_holds():
    from mmtok.data.shapes import COLOURS, SHAPES, SIZES

    size, colour, shape = app.gallery_query().split()[1:]
    scenes = build_dataset("shapes", "heldout", resolution=64, render=False)
    want = (SHAPES.index(shape) + 1, COLOURS.index(colour) + 1, SIZES.index(size) + 1)
    held = {
        tuple(int(scenes[i][k][s]) for k in ("shape", "colour", "size")) for i in range(48) for s in range(9)
    }
    assert want in held  # one of the 48 gallery scenes holds exactly this object


def test_generator_menu_is_ranked_and_says_what_each_model_does():
    info = app.generator_info()
    names = list(info)
    assert names[0] == "xar-shapes64" and {"xar-digits64", "dit-digits64"} <= set(names)
    for name, m in info.items():
        assert m["label"].startswith(f"{name} - ") and "%" in m["label"] and m["about"]
    texts = [n for n in names if info[n]["condition"] == "text"]
    assert names[: len(texts)] == texts  # text models first, best one-object accuracy first
    prompt, vocab, cls, steps, about = app.model_changed("xar-digits64")
    assert prompt.visible is False and vocab.visible is False and cls.visible is True and "digit" in about
    prompt, vocab, cls, steps, about = app.model_changed("elm-shapes64")
    assert prompt.visible is True and cls.visible is False and steps.interactive is False


def test_clip_tab_flags_an_unfamiliar_image(tmp_path):
    import skimage.data

    photo = tmp_path / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(photo)
    _, text = app.clip_classify(None, str(photo), "a red circle\na blue square", "lightclip-shapes64")
    assert "looks unlike anything the model was trained on" in text


def test_a_mask_is_checked_against_the_sentences_own_numbers(tmp_path):
    """The true lesion's mask agrees with its sentence; another lesion's mask is named as such."""
    import json

    import nibabel as nib

    case = _case(tmp_path)
    state = app.load_upload(str(case / "SUV.nii.gz"), str(case / "CTres.nii.gz"), "")[0]
    seg = np.asarray(nib.load(case / "SEG.nii.gz").dataobj)
    suv = np.asarray(nib.load(case / "SUV.nii.gz").dataobj)
    lesions = [
        les for les in json.loads((case / "truth.json").read_text())["lesions"] if les["expect"] == "located"
    ]
    assert len(lesions) >= 2
    first, other = lesions[0], lesions[1]
    mask = seg == first["label"]
    assert app._against_the_sentence(state, first["sentence"], mask, float(suv[mask].max())) is None
    wrong = seg == other["label"]
    clash = app._against_the_sentence(state, first["sentence"], wrong, float(suv[wrong].max()))
    assert clash and "the sentence says" in clash
    assert app._against_the_sentence(state, "Left axillary node.", wrong, 5.0) is None  # no numbers: no check
