"""Zero-shot evaluation: retrieval recall, prompt-ensembled classifiers, the colour-histogram floor."""

import pytest
import torch

from mmtok import hub
from mmtok.clip import zeroshot as Z
from mmtok.clip.model import LightCLIP


def test_retrieval_metrics_count_ranks():
    e = torch.eye(4)
    perfect = Z.retrieval_metrics(e, e, ks=(1, 2))
    assert perfect["image_to_text_R@1"] == 1 and perfect["text_to_image_R@2"] == 1
    # Text i+1 is the best match of image i: every true text is ranked second.
    shifted = Z.retrieval_metrics(e, 0.5 * e + e.roll(1, 0), ks=(1, 2))
    assert shifted["image_to_text_R@1"] == 0 and shifted["image_to_text_R@2"] == 1
    assert shifted["mean_R@1"] == 0


def test_object_classes_and_prompts():
    assert len(Z.OBJECTS) == 128 and ("small", "red", "circle") in Z.OBJECTS
    assert len(Z.OBJECT_TEMPLATES) == 9
    assert (
        Z.OBJECT_TEMPLATES[0].format(size="small", colour="red", shape="star")
        == "a small red star in the top left"
    )


def test_zero_shot_runs_on_a_tiny_model(weights_dir):
    torch.manual_seed(0)
    hub.save(LightCLIP(arch="lightclip-tiny"), weights_dir / "tiny-clip")
    results = Z.evaluate_clip(["tiny-clip"], n=40, progress=False, write=True, probe=False)["tiny-clip"]
    for key in (
        "shapes_test/object_acc",
        "shapes_heldout/colour_acc",
        "retrieval_heldout/mean_R@1",
        "digits_test/accuracy",
    ):
        assert 0 <= results[key] <= 1
    card = (weights_dir / "tiny-clip" / "README.md").read_text()
    assert "## Zero-shot evaluation" in card and "mmtok eval clip --model tiny-clip" in card


def test_colour_histogram_probe_reads_colour_but_not_shape():
    floor = Z.colour_histogram_probe(n_train=400, n_eval=150)
    assert floor["probe_test/colour_acc"] > 0.8  # colour is in the histogram
    assert floor["probe_test/shape_acc"] < floor["probe_test/colour_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lightclip-shapes64", "clip-shapes64"])
def test_shipped_weights_beat_chance(name):
    if name not in {m["name"] for m in hub.list_models()}:
        pytest.skip(f"{name} not in weights/")
    model = hub.load(name)
    heldout = Z.shapes_zero_shot(model, "heldout", n=200)
    assert heldout["colour_acc"] > 0.5  # chance 1/8
    assert Z.digits_zero_shot(model)["accuracy"] > 0.18  # chance 1/10: 5 sd above it on 355 digits
