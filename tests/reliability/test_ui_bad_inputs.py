"""The bad-input suite for the web UI's endpoints, called directly: every bad file, text or setting must
end as a one-line ``gr.Error`` (shown in the page) or a normal answer -- never another exception, which
gradio would log with a traceback."""

import gradio as gr
import numpy as np
import pytest
from badfiles import IMAGE_ACCEPTED, IMAGE_ERRORS, PROMPTS, nifti

from apps import gradio_app as app


def outcome(fn, *args):
    """ "ok", or the gr.Error's message; any other exception fails the test."""
    try:
        fn(*args)
    except gr.Error as e:
        message = str(e.message if hasattr(e, "message") else e)
        assert "\n" not in message.strip() and "Traceback" not in message
        return message
    return "ok"


@pytest.mark.parametrize("case", [*IMAGE_ERRORS, "tiny_1x1", *IMAGE_ACCEPTED])
def test_image_endpoints(zoo, case):
    path = str(zoo["image"][case])
    results = {
        "tokenize": outcome(app.tokenize, None, path, "kl-f8-64"),
        "clip": outcome(app.clip_classify, None, path, "a red circle\na blue square", "lightclip-shapes64"),
        "compress": outcome(app.compress, None, path, "lightclip-shapes64", "tcc", 0.5, ""),
    }
    for name, result in results.items():
        if case in IMAGE_ERRORS:
            assert IMAGE_ERRORS[case] in result, (name, result)
        elif case == "tiny_1x1" and name == "tokenize":
            assert "smaller than the tokenizer's 8x8 patch" in result
        else:
            assert result == "ok", (name, result)


@pytest.mark.parametrize("case", PROMPTS)
def test_text_endpoints(zoo, case):
    text = PROMPTS[case]
    state = app.load_upload(str(zoo["case"] / "SUV.nii.gz"), str(zoo["case"] / "CTres.nii.gz"), "")[0]
    results = {
        "clip labels": outcome(
            app.clip_classify, None, str(zoo["image"]["ok_gray"]), text, "lightclip-shapes64"
        ),
        "clip search": outcome(app.clip_search, text, "lightclip-shapes64", 3),
        "weaklabel": outcome(app.weaklabel, state, text),
        # xar-digits64 is class-conditional: the prompt box is not read
        "generate": outcome(app.generate, None, "xar-digits64", text, 3, 1, 0, 1, 3.0),
    }
    if hasattr(app, "ground_sentence"):
        results["ground"] = outcome(app.ground_sentence, None, state, text, "no-such-model", 3)
    expected = {
        "empty": {"clip labels": "label", "clip search": "search", "weaklabel": "report", "ground": "empty"},
        "100kB": {
            "clip labels": "limit",
            "clip search": "limit",
            "weaklabel": "findings",
            "ground": "characters",
        },
        "non_utf8": {"clip labels": "ok", "clip search": "ok", "weaklabel": "findings", "ground": "UTF-8"},
    }[case]
    for name, result in results.items():
        want = expected.get(name, "ok")
        assert (result == "ok") if want == "ok" else (want in result), (name, result)


@pytest.mark.parametrize("role", ["pet", "ct"])
@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "text_as_nii", "truncated", "2d", "4d", "nan", "singular_affine", "1e9_voxels"],
)
def test_volume_uploads(zoo, role, case):
    bad, c = str(zoo["volume"][case]), zoo["case"]
    args = (bad, None, "") if role == "pet" else (str(c / "SUV.nii.gz"), bad, "")
    result = outcome(app.load_upload, *args)
    assert result != "ok" and role.upper() in result


def test_grid_mismatch_and_settings(zoo, tmp_path):
    other = nifti(tmp_path, "ct_other_grid.nii.gz", np.full((20, 20, 20), -1000.0))
    result = outcome(app.load_upload, str(zoo["case"] / "SUV.nii.gz"), str(other), "")
    assert result == "ok" or "grid" in result  # resampled onto the PET grid, or refused in one line
    bad_settings = [
        (None, 1, 0, 1, 3.0),  # a cleared class field
        (3, None, 0, 1, 3.0),
        (3, 1, 10**30, 1, 3.0),  # a seed beyond 64 bits
        (3, 1, 0, 1, float("nan")),
        (3, 10**6, 0, 1, 3.0),
        (99, 1, 0, 1, 3.0),
        ("x", 1, 0, 1, 3.0),
    ]
    for settings in bad_settings:
        assert outcome(app.generate, None, "xar-digits64", "", *settings) != "ok", settings
    image = str(zoo["image"]["ok_gray"])
    for name in ("no-such-model", str(tmp_path)):  # unknown name; a folder that is no model
        assert outcome(app.generate, None, name, "", 3, 1, 0, 1, 3.0) != "ok"
        assert outcome(app.tokenize, None, image, name) != "ok"
        assert outcome(app.clip_classify, None, image, "a", name) != "ok"
