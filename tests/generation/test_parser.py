"""PromptParser: caption -> per-slot labels; its targets, training signal and readable parse."""

import torch

from mmtok.data.shapes import BACKGROUNDS, SHAPES, ShapesDataset, caption_background, mention_ends
from mmtok.generation.parser import PromptParser

SMALL = {"dim": 32, "heads": 2, "embed_dim": 16, "layers": 1}


def _batch(n=16, seed=0):
    ds = ShapesDataset("train", size=n, render=False, seed=seed)
    items = [ds[i] for i in range(n)]
    assert "image" not in items[0]  # render=False: no picture is drawn
    batch = {k: torch.stack([it[k] for it in items]) for k in ("shape", "colour", "size")}
    batch["caption"] = [it["caption"] for it in items]
    return batch


def test_caption_background_reads_only_what_the_caption_says():
    assert caption_background("a red star at the top on a striped background") == BACKGROUNDS.index("striped")
    assert caption_background("A red star at the top on a plain grey background.") == 1
    assert caption_background("a red star at the top") is None


def test_targets_mark_unsaid_backgrounds_as_class_zero():
    m = PromptParser(**SMALL)
    batch = _batch()
    t = m.targets(batch)
    for i, cap in enumerate(batch["caption"]):
        said = caption_background(cap)
        assert t["background"][i] == (0 if said is None else said + 1)
    assert torch.equal(t["shape"], batch["shape"])


def test_token_targets_tag_each_new_object_noun_with_its_slot():
    m = PromptParser(**SMALL)
    caption = "a big red disc in the top left and a small blue star above the red disc."
    tags = m.token_targets([caption], 32)
    ids = m.encoder.tokenizer([caption]).input_ids[0]
    nouns = (tags["object"][0] == 1).nonzero().flatten().tolist()
    assert nouns == []  # "above" the top row is off the grid: no scene, so no noun is scored...
    assert (tags["object"][0] == 0).sum() > 0  # ...but every token is still "not an object noun"
    caption = "a big red disc in the middle left and a small blue star above it."
    tags = m.token_targets([caption], 32)
    ids = m.encoder.tokenizer([caption]).input_ids[0]
    nouns = (tags["object"][0] == 1).nonzero().flatten().tolist()
    words = [m.encoder.tokenizer.encode(w)[-1] for w in ("disc", "star")]
    assert [int(ids[t]) for t in nouns] == words
    assert tags["slot"][0, nouns].tolist() == [3, 0]  # middle left; above it = top left
    assert tags["shape"][0, nouns].tolist() == [SHAPES.index("circle"), SHAPES.index("star")]
    assert (tags["object"][0] == 0).sum() == len(m.encoder.tokenizer.encode(caption)) + 2 - 2
    assert (tags["slot"][0] != -100).sum() == 2  # slots and attributes are scored at the nouns only
    assert len(mention_ends(caption)) == 2


def test_the_parser_learns_a_batch_and_reads_it_back():
    torch.manual_seed(0)
    m = PromptParser(dim=64, heads=2, embed_dim=32, layers=2, grammar=False)
    batch = _batch(8)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(150):
        loss, logs = m.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["exact"] == 1.0, logs  # memorises 8 captions exactly
    m.eval()
    parsed = m.parse(batch["caption"])
    for i, p in enumerate(parsed):
        slots = [s for s, _ in p["objects"]]
        assert slots == torch.nonzero(batch["shape"][i]).flatten().tolist()
        for s, labels in p["objects"]:
            assert labels["colour"] == batch["colour"][i, s]
    probs = m.probabilities(batch["caption"][:2])
    assert probs["shape"].shape == (2, 9, 9) and torch.allclose(probs["shape"].sum(-1), torch.ones(2, 9))


def test_grammar_mode_reads_grammar_prompts_exactly_and_others_with_the_network():
    torch.manual_seed(0)
    m = PromptParser(**SMALL).eval()  # untrained: the network's reading is noise
    batch = _batch(4)
    probs = m.probabilities(batch["caption"])
    for k in ("shape", "colour", "size"):
        assert torch.equal(probs[k].argmax(-1), batch[k])
    off = ["a red pentagon somewhere", "draw me a cat"]
    m.grammar = False
    net = m.probabilities(off)
    m.grammar = True
    assert torch.equal(m.probabilities(off)["shape"], net["shape"])
