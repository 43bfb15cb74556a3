"""TextTokenizer: CLIP BPE agrees with open_clip token for token; HF wrapper on the shipped MiniLM."""

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer

from mmtok.errors import CheckpointError, InputError, MmtokError
from mmtok.tokenizers.text import TextTokenizer, TokenizedText, resolve_hf_path

SOT, EOT = 49406, 49407

CAPTIONS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "TWO RED CUBES, left of a blue sphere!",
    "",
    "   ",
    "  leading and trailing   spaces  ",
    "tabs\tand\nnew\r\nlines",
    "it's, they're, we'll, I'd, you've, I'm, don't, CAN'T",
    "3 dogs, 12 cats and 2,500 birds; pi = 3.14159 (approx.)",
    "call 555-0100 or email me@example.com #hashtag @user 50% off!!!",
    "punctuation... ?! -- ; : \" ' ( ) [ ] { } < > / \\ | ~ ` ^ * + = _",
    "café crème brûlée, naïve jalapeño über Ärger ß straße",
    "“curly quotes” and ‘single’ — em dash – en dash … ellipsis",
    "emoji 😀🐶🏳️‍🌈 and 👍🏽",
    "北京 日本語のテキスト 한국어 Ελληνικά русский текст العربية",
    "ﬁne ﬂower ligatures and Ｆｕｌｌｗｉｄｔｈ letters",
    "Tom &amp; Jerry &lt;3 &quot;quoted&quot; &#39;apos&#39; caf&eacute; &nbsp;nbsp",
    "double &amp;amp; and triple &amp;amp;amp; escaped",
    "<b>bold</b> and &lt;i&gt;italic&lt;/i&gt;",
    "mojibake: cafÃ© and donâ€™t",
    "control\x00chars\x07and\x1b[31mterminal escapes\x1c\x1f",
    "non\u00a0breaking\u2009thin\u3000ideographic\u200bzero-width spaces",
    "İstanbul DİYARBAKIR Σίσυφος",
    "<start_of_text> literal special tokens <end_of_text> in text",
    "word " * 100,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
]


def _random_captions(n: int, seed: int = 0) -> list[str]:
    """Varied captions from a small grammar with numbers, casing, punctuation and some unicode."""
    rng = random.Random(seed)
    words = "red Blue GREEN cube sphere dog's cats table lamp on left of the a behind next to photo".split()
    extras = ["3.5", "42", "1999", ",", "!", "...", "(big)", "&amp;", "café", "😀", "’s", "—", "x2"]
    return [
        " ".join(rng.choice(words + extras) for _ in range(rng.randint(0, 40))).capitalize() for _ in range(n)
    ]


@pytest.fixture(scope="module")
def clip():
    return TextTokenizer.clip()


@pytest.fixture(scope="module")
def reference():
    return SimpleTokenizer()  # what open_clip.tokenize() uses


@pytest.fixture(scope="module")
def minilm_dir():
    return resolve_hf_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return TextTokenizer.from_hf(minilm_dir, max_length=16)


# ------------------------------------------------------------------------------------------ CLIP BPE


def test_clip_matches_open_clip_on_edge_cases(clip, reference):
    ours = clip(CAPTIONS)
    assert isinstance(ours, TokenizedText)
    assert ours.input_ids.dtype == torch.long and ours.input_ids.shape == (len(CAPTIONS), 77)
    assert torch.equal(ours.input_ids, reference(CAPTIONS))
    assert torch.equal(clip(CAPTIONS).input_ids, ours.input_ids)  # second call comes from the caches


def test_clip_matches_open_clip_on_many_captions(clip, reference):
    captions = _random_captions(3000)
    assert len(set(captions)) > 2800
    assert torch.equal(clip(captions).input_ids, reference(captions))
    # A fresh tokenizer (empty caches) fed one at a time agrees too.
    fresh = TextTokenizer.clip()
    for caption in captions[:200]:
        assert torch.equal(fresh(caption).input_ids, reference(caption))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(text=st.text(max_size=60))
def test_clip_matches_open_clip_on_arbitrary_text(clip, reference, text):
    assert torch.equal(clip(text).input_ids, reference(text))


@pytest.mark.parametrize("context_length", [2, 5, 16, 77])
def test_truncation_keeps_eot_and_length(reference, context_length):
    tok = TextTokenizer.clip(context_length)
    long_caption = "a very long caption about " + "many red cubes and blue spheres, " * 20
    out = tok([long_caption, "a cat"])
    assert out.input_ids.shape == (2, context_length)
    assert out.input_ids[0, 0] == SOT and out.input_ids[0, -1] == EOT
    assert out.attention_mask[0].all()
    full = tok.encode(long_caption)
    assert out.input_ids[0, 1:-1].tolist() == full[: context_length - 2]
    assert torch.equal(out.input_ids, reference([long_caption, "a cat"], context_length=context_length))


def test_attention_mask_and_padding(clip):
    captions = ["", "a cat", "two red cubes on the left of a blue sphere."]
    out = clip(captions)
    lengths = [len(clip.encode(c)) + 2 for c in captions]
    assert lengths[0] == 2 and out.input_ids[0, :2].tolist() == [SOT, EOT]
    assert out.lengths.tolist() == lengths
    expected = (torch.arange(77)[None, :] < torch.tensor(lengths)[:, None]).long()
    assert out.attention_mask.dtype == torch.long and torch.equal(out.attention_mask, expected)
    assert (out.input_ids[out.attention_mask == 0] == clip.pad_token_id).all()
    rows = torch.arange(len(captions))
    assert (out.input_ids[rows, out.lengths - 1] == clip.eos_token_id).all()  # last real token is EOT


def test_padding_longest_trims_to_longest_row(clip):
    captions = ["a cat", "two red cubes on the left of a blue sphere."]
    longest = TextTokenizer.clip(padding="longest")(captions)
    full = clip(captions)
    width = int(full.lengths.max())
    assert longest.input_ids.shape == (2, width)
    assert torch.equal(longest.input_ids, full.input_ids[:, :width])
    assert torch.equal(longest.attention_mask, full.attention_mask[:, :width])


def test_clip_properties_and_to(clip):
    assert clip.vocab_size == 49408 and clip.context_length == 77
    assert (clip.bos_token_id, clip.eos_token_id, clip.pad_token_id) == (SOT, EOT, 0)
    assert clip.mask_token_id is None
    assert clip.special_tokens == {"<start_of_text>": SOT, "<end_of_text>": EOT}
    out = clip(["a", "b", "c"]).to("cpu")
    assert isinstance(out, TokenizedText) and len(out) == 3 and out.input_ids.device.type == "cpu"
    assert "ClipTokenizer" in repr(clip)


def test_mask_special_token_extends_vocab():
    tok = TextTokenizer.clip(extra_special_tokens=("<mask>", "<sep>"))
    reference = SimpleTokenizer(additional_special_tokens=["<mask>", "<sep>"])
    assert tok.vocab_size == 49410 and tok.mask_token_id == 49408 and tok.special_tokens["<sep>"] == 49409
    captions = ["a photo of a <mask>", "<MASK> <mask><mask>cat<sep>dog", *CAPTIONS[:10]]
    assert torch.equal(tok(captions).input_ids, reference(captions))
    ids = tok("a photo of a <mask>").input_ids[0]
    assert ids[:7].tolist() == [SOT, 320, 1125, 539, 320, 49408, EOT]
    # Ordinary text keeps open_clip's ids; the mask id is never produced by BPE.
    assert torch.equal(tok(CAPTIONS).input_ids, TextTokenizer.clip()(CAPTIONS).input_ids)
    assert tok.decode(ids, skip_special_tokens=False).startswith("<start_of_text>a photo of a <mask>")
    assert tok.decode(ids) == "a photo of a"


@pytest.mark.parametrize("bad", [("<MASK>",), ("",), ("a b",), ("<start_of_text>",), ("<m>", "<m>"), (3,)])
def test_bad_extra_special_tokens(bad):
    with pytest.raises(InputError):
        TextTokenizer.clip(extra_special_tokens=bad)


def test_decode_round_trip(clip):
    captions = ["a photo of a cat", "two red cubes on the left of a blue sphere", "", "café 😀 北京"]
    out = clip(captions)
    assert clip.decode(out.input_ids) == captions
    assert clip.decode(out.input_ids[1]) == captions[1]
    assert clip.decode(out.input_ids[1].numpy()) == captions[1]
    assert clip.decode(out.input_ids[:0]) == []
    assert clip.decode(clip.encode("a photo of a cat")) == "a photo of a cat"
    assert clip.decode(out.input_ids[0, :4], skip_special_tokens=False) == "<start_of_text>a photo of"
    with pytest.raises(InputError):
        clip.decode([49408])


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [None, 5, b"bytes", {"a set"}, ["ok", None], ["ok", 3], [["nested"]]])
def test_bad_input_raises_input_error(clip, bad):
    with pytest.raises(InputError) as info:
        clip(bad)
    assert isinstance(info.value, MmtokError) and "\n" not in str(info.value)


def test_empty_batch(clip):
    out = clip([])
    assert out.input_ids.shape == (0, 77) and out.attention_mask.shape == (0, 77)


@pytest.mark.parametrize("context_length", [0, 1, 7.5])
def test_bad_context_length(context_length):
    with pytest.raises(InputError):
        TextTokenizer.clip(context_length)


# -------------------------------------------------------------------------------------- Hugging Face


def test_hf_minilm_ids_and_masks(minilm, minilm_dir):
    from transformers import AutoTokenizer

    assert minilm_dir.endswith("model") and os.path.isfile(os.path.join(minilm_dir, "tokenizer.json"))
    texts = ["Hello world", "", "A 12 mm lesion in the LEFT lung, SUVmax 7.4.", "x " * 40]
    out = minilm(texts)
    assert out.input_ids.dtype == torch.long and out.input_ids.shape == (4, 16)
    assert out.input_ids[0, :4].tolist() == [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    assert out.lengths.tolist() == [4, 2, int(out.lengths[2]), 16]
    expected = (torch.arange(16)[None, :] < out.lengths[:, None]).long()
    assert torch.equal(out.attention_mask, expected)
    assert (out.input_ids[out.attention_mask == 0] == minilm.pad_token_id).all()
    rows = torch.arange(4)
    assert (out.input_ids[rows, out.lengths - 1] == minilm.eos_token_id).all()  # truncation keeps [SEP]
    hf = AutoTokenizer.from_pretrained(minilm_dir)
    direct = hf(texts, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    assert np.array_equal(out.input_ids.numpy(), direct["input_ids"])
    assert np.array_equal(out.attention_mask.numpy(), direct["attention_mask"])


def test_hf_properties_decode_and_padding(minilm, minilm_dir):
    assert (minilm.bos_token_id, minilm.eos_token_id, minilm.pad_token_id) == (101, 102, 0)
    assert minilm.mask_token_id == 103 and minilm.vocab_size == 30522 and minilm.context_length == 16
    assert minilm.special_tokens["[MASK]"] == 103
    out = minilm(["A small lesion in the left lung.", "hi"])
    assert minilm.decode(out.input_ids) == ["a small lesion in the left lung.", "hi"]
    assert minilm.decode(out.input_ids[1], skip_special_tokens=False).startswith("[CLS] hi [SEP] [PAD]")
    longest = TextTokenizer.from_hf(minilm_dir, max_length=16, padding="longest")(["A small lesion", "hi"])
    full = minilm(["A small lesion", "hi"])
    width = int(full.lengths.max())
    assert longest.input_ids.shape == (2, width) and longest.attention_mask[1, :4].tolist() == [1, 1, 1, 0]
    assert torch.equal(longest.input_ids, full.input_ids[:, :width])
    assert minilm([]).input_ids.shape == (0, 16)
    with pytest.raises(InputError):
        minilm(["fine", None])


def test_hf_id_alias_resolves_offline(minilm_dir):
    assert resolve_hf_path("sentence-transformers/all-MiniLM-L6-v2") == minilm_dir
    assert resolve_hf_path("some/other-model") == "some/other-model"
    tok = TextTokenizer.from_hf("sentence-transformers/all-MiniLM-L6-v2", max_length=8)
    assert tok("hello world").input_ids[0, :4].tolist() == [101, 7592, 2088, 102]


def test_hf_missing_folder_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError) as info:
        TextTokenizer.from_hf(tmp_path / "no-such-tokenizer")
    assert "\n" not in str(info.value)
