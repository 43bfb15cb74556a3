"""The shipped class-conditional generators draw the digit they are asked for (judge-digits64)."""

import pytest
import torch

import mmtok
from mmtok.generation.pipeline import GenerationPipeline


@pytest.mark.parametrize("name", ["xar-digits64", "dit-digits64"])
def test_shipped_digit_generators(name):
    pipe = GenerationPipeline(name)
    judge = mmtok.load("judge-digits64")
    labels, images = [], []
    for digit in range(10):
        images += pipe(class_label=digit, n=2, seed=digit, steps=10).images
        labels += [digit, digit]
    pred = judge.predict(torch.stack(images))
    # Measured on 1,000 images at 20 steps: 97.3% (xAR) and 99.9% (DiT); 20 images at 10 steps here.
    assert (pred == torch.tensor(labels)).float().mean() >= 0.8


def _attributes_at_named_slots(
    objects: int, n: int = 16, model: str = "xar-shapes64"
) -> tuple[dict, torch.Tensor]:
    """``model`` on ``n`` test-split prompts of ``objects`` objects (seed i, 10 steps): for each
    attribute, whether the judge reads it right at each named slot, and which slots are named."""
    from mmtok.eval.generation import _scenes

    pipe = GenerationPipeline(model)
    judge = mmtok.load("judge-shapes64")
    scenes = _scenes("test", objects, n, 0)
    images = torch.cat(
        [torch.stack(pipe(prompt=s["caption"], n=1, seed=i, steps=10).images) for i, s in enumerate(scenes)]
    )
    pred = judge.predict(images)
    right = {k: pred[k] == torch.stack([s[k] for s in scenes]) for k in ("shape", "colour", "size")}
    return right, torch.stack([s["shape"] for s in scenes]) > 0


def test_shipped_text_generator_puts_the_named_colour_and_size_in_place():
    """xar-shapes64 on one-object prompts of the test split: the judge reads the slot the caption
    names. Measured on 256 prompts (seed 1) at 20 steps: colour 99.6%, size 100%, shape 99.2%;
    16 prompts at 10 steps here."""
    right, occupied = _attributes_at_named_slots(1)
    for key in ("colour", "size"):
        assert right[key][occupied].float().mean() >= 0.9, key
    assert right["shape"][occupied].float().mean() >= 0.7


def test_shipped_text_generator_binds_colours_to_the_named_places():
    """Two-object prompts: each object's colour is read at the slot the caption names for it. With
    xAR's own prompt encoder this was at chance (41% on 256 prompts: either named colour lands in
    either place); with the layout prompt encoder it is 99.6%. 16 prompts (32 objects) at 10 steps."""
    right, named = _attributes_at_named_slots(2)
    assert named.sum() == 32 and right["colour"][named].float().mean() >= 0.9


def test_shipped_elm_draws_through_the_shipped_binary_tokenizer():
    """elm-shapes64 was trained on the codes of the shipped bin-f8-64; a tokenizer swapped without
    retraining ELM decodes its codes into noise. Measured on 256 one-object prompts: colour 93.4%,
    size 91.0%, shape 60.2% (32-bit codes; over the 16-bit ones: 91.4 / 91.4 / 61.7%); 16 prompts
    here (the pipeline's default sampler)."""
    right, occupied = _attributes_at_named_slots(1, model="elm-shapes64")
    assert right["colour"][occupied].float().mean() >= 0.7
