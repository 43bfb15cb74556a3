import pytest

from mmtok.grounding.reports import (
    find_organ,
    find_side,
    parse_report,
    parse_sentence,
    split_sentences,
    strip_numbers,
)

# The ten phrasings of the reference note (section 5) -> (SUVmax, slice, side, organ, status).
TEN = [
    ("Hypermetabolic right level IIA node, 1.4 x 1.0 cm, SUVmax 7.2 (image 143).",
     7.2, 143, "right", "cervical node", "ok"),
    ("Spiculated 2.1 cm left upper lobe nodule, SUV max 12.6 (series 4, image 120).",
     12.6, 120, "left", "lung", "ok"),
    ("Focal right iliac bone uptake without CT correlate, SUVmax 5.3, slice 212.",
     5.3, 212, "right", "bone", "ok"),
    ("Left axillary node, 0.9 cm short axis, SUV max 3.1 (PET image 98), previously 6.4.",
     3.1, 98, "left", "axillary node", "ok"),
    ("New hepatic segment 7 lesion, maximum SUV 9.8 on axial image 176, above background liver (SUVmax 2.9).",
     9.8, 176, None, "liver", "ok"),
    ("Subcarinal node (4/131) with SUVmax 4.4, up from 3.8.", 4.4, 131, None, "mediastinal node", "ok"),
    ("PSMA-avid left external iliac node, SUVmax 15.2, axial slice 240.",
     15.2, 240, "left", "iliac node", "ok"),
    ("DOTATATE-avid pancreatic tail lesion (SUVmax 28.7, image 167).", 28.7, 167, None, "pancreas", "ok"),
    ("Fluciclovine uptake in the prostate bed, SUVmax 3.6 (slice 255), indeterminate.",
     3.6, 255, None, "prostate", "ok"),
    ("Multiple pulmonary nodules; the largest, right lower lobe 1.2 cm, SUVmax 4.0 (image 151).",
     4.0, 151, "right", "lung", "ok"),
]  # fmt: skip


@pytest.mark.parametrize("sentence, suv, slice_, side, organ, status", TEN)
def test_reference_phrasings(sentence, suv, slice_, side, organ, status):
    (f,) = parse_report(sentence)
    assert (f.suvmax, f.slice, f.side, f.organ, f.status) == (suv, slice_, side, organ, status)


def test_prior_and_reference_values_are_not_current():
    f = parse_sentence("Right axillary node with SUVmax of 5.5 on image 80 (previously SUVmax 8.1).")
    assert f.suvmax == 5.5 and [m["kind"] for m in f.suv_mentions] == ["current", "prior"]
    f = parse_sentence("Left hilar node: SUVmax 6.7 (im 52), compared to SUVmax 8.4 on the prior study.")
    assert f.suvmax == 6.7 and f.slice == 52 and f.status == "ok"
    f = parse_sentence("Splenic lesion SUVmax 4.2 (image 90); SUVmax 6.0 on the prior study.")
    assert f.suvmax == 4.2 and f.status == "ok"
    # Reference organs and SUVmean are never findings.
    assert parse_report("Background liver SUVmean 2.1; mediastinal blood pool SUVmax 1.8.") == []


def test_ambiguity_is_flagged_not_guessed():
    f = parse_sentence(
        "Right axillary node (SUVmax 5.1, image 88) and left axillary node (SUVmax 3.9, image 92)."
    )
    assert f.status == "ambiguous" and f.suvmax is None
    f = parse_sentence("Left iliac bone lesion spanning images 120-127, SUVmax 6.2.")
    assert f.status == "ambiguous" and "range" in f.reason and f.slice is None
    f = parse_sentence("Nodes with SUVs of 4.1 and 5.0 on slice 77.")
    assert f.status == "ambiguous"
    f = parse_sentence("Mass in the liver, SUVmax 8.0 on slices 100 and 104.")
    assert f.status == "ambiguous"


def test_semicolon_splits_only_when_both_halves_have_a_pair():
    fs = parse_report("Right hilar node, SUVmax 4.1, slice 60; left hilar node, SUVmax 5.2, slice 63.")
    assert [(f.suvmax, f.slice, f.side, f.status) for f in fs] == [
        (4.1, 60, "right", "ok"),
        (5.2, 63, "left", "ok"),
    ]


def test_skipped_findings():
    (f,) = parse_report("Mild nonspecific uptake in the left shoulder joint, SUVmax 2.1 (image 60).")
    assert f.status == "skipped" and "below 2.5" in f.reason
    (f,) = parse_report("Right hilar uptake, SUVmax 4.0 on coronal image 45.")
    assert f.status == "skipped" and "no axial slice" in f.reason
    # No slice or no SUV: not a finding at all.
    assert (
        parse_report("Right hilar activity is best seen on coronal image 45. Liver lesion, SUVmax 6.") == []
    )


def test_split_sentences_keeps_decimals_and_lines():
    text = "FINDINGS:\nNode 1.4 x 1.0 cm, SUVmax 7.2 (image 143). Next one, SUV 3.3, slice 9!\n* bullet item"
    assert split_sentences(text) == [
        "FINDINGS:",
        "Node 1.4 x 1.0 cm, SUVmax 7.2 (image 143).",
        "Next one, SUV 3.3, slice 9!",
        "bullet item",
    ]


def test_strip_numbers_removes_suv_and_slice_but_keeps_meaning():
    cases = {
        "Hypermetabolic right level IIA node, 1.4 x 1.0 cm, SUVmax 7.2 (image 143).":
            "Hypermetabolic right level IIA node, 1.4 x 1.0 cm, SUVmax.",
        "Subcarinal node (4/131) with SUVmax 4.4, up from 3.8.": "Subcarinal node with SUVmax, up from.",
        "Left upper lobe nodule, SUV max 12.6 (series 4, image 120).": "Left upper lobe nodule, SUV max.",
        "Right hilar node demonstrates an SUV max of 5.0 at slice location 61.":
            "Right hilar node demonstrates an SUV max.",
    }  # fmt: skip
    for sentence, want in cases.items():
        got = strip_numbers(sentence)
        assert got == want
        assert not any(n in got for n in ("7.2", "143", "131", "4.4", "3.8", "12.6", "120", "5.0", "61"))


def test_side_and_organ_vocabulary():
    assert find_side("bilateral inguinal nodes") == "bilateral"
    assert find_side("right and left hilar") is None
    assert find_organ("right external iliac node") == "iliac node"
    assert find_organ("right iliac bone lesion") == "bone"
    assert find_organ("L2 vertebral body lesion") == "bone"
    assert find_organ("para-aortic node") == "retroperitoneal node"
    assert find_organ("pulmonary nodule") == "lung"
    assert find_organ("something vague") is None
    # Reference organs do not name the lesion's organ; the first organ named wins.
    assert find_organ("New right iliac bone lesion, SUV 6.1, above background liver (SUVmax 3.5)") == "bone"
    assert find_organ("Rib lesion abutting the lung") == "bone"
