"""PET/CT report mining: sentences -> findings (current SUVmax, axial slice, side, organ).

Rules (after the UW weak-labelling pipeline, see ``docs/petct.md``):

- Sentences split on ``. ! ?`` (not decimal points), ``*`` and newlines. A semicolon splits a
  sentence only when every part carries its own SUV and slice.
- A finding needs at least one *current* SUV (SUVmax/SUVpeak/plain SUV; not SUVmean, not a prior
  value such as "previously SUVmax 6.4" or "compared to SUVmax 4.0 on the prior study", not a
  reference organ such as "background liver (SUVmax 2.9)") and a slice/image number.
- Slice forms: "slice 87", "slice location 218", "image 143", "im 120", "axial image 176",
  "PET image 98", "series 4, image 120", "(4/131)". Coronal/sagittal/CT numbers are not axial PET
  slices and are ignored.
- Ambiguity is reported, never guessed: several current SUVs, several slices or a slice range.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_NUM = r"(\d+(?:\.\d+)?)"
_SUV_RE = re.compile(
    r"\b(maximum\s+|max(?:imal)?\s+|peak\s+|mean\s+)?(?:SUV|SUL)s?\s*[-_]?\s*(max|mean|peak)?\b"
    r"[^0-9;()]{0,22}?" + _NUM + r"(\s*(?:and|,|to|-|–)\s*\d+(?:\.\d+)?)?",
    re.IGNORECASE,
)
_SHORTHAND_RE = re.compile(r"\(\s*(\d{1,3})\s*/\s*(\d{1,4})\s*\)")
_SERIES_RE = re.compile(
    r"\bseries\s*#?\s*(\d+)\s*[,;:]?\s*(?:image|im|img)s?\.?\s*#?\s*(\d+)(?:\s*(?:-|–|to|through)\s*(\d+))?",
    re.IGNORECASE,
)
_SLICE_RE = re.compile(
    r"\b(?:(axial|coronal|sagittal)\s+)?(?:(PET|CT|fused)\s+)?(slice|image|im|img)(s?)\.?\s*"
    r"(?:location|number|no\.?|#)?\s*(?:of\s+)?(\d+)\b(?!\.\d)(?:\s*(?:-|–|to|through|and)\s*(\d+))?",
    re.IGNORECASE,
)
_PRIOR_BEFORE = re.compile(
    r"\b(previous(?:ly)?|prior(?:ly)?|formerly|before|was|up\s+from|down\s+from|compared\s+(?:to|with)"
    r"|from)\W*(?:an?\s+|the\s+)?$",
    re.IGNORECASE,
)
_PRIOR_AFTER = re.compile(
    r"^\W*(?:(?:on|in|at)\s+(?:the\s+)?)?(prior|previous(?:ly)?|earlier|baseline)\b", re.IGNORECASE
)
_REFERENCE = re.compile(r"\b(background|blood\s*pool|reference|mediastin\w*\s+blood)\b", re.IGNORECASE)
_NODE = re.compile(r"\b(nodes?|nodal|lymph|(?:lymph)?adenopathy)\b", re.IGNORECASE)
NODE_STATIONS = (
    ("cervical node", r"cervical|level\s+[IV]+[AB]?\b|neck|supraclavicular|jugular"),
    ("axillary node", r"axilla"),
    ("hilar node", r"hil(?:ar|um)"),
    ("mediastinal node", r"subcarinal|paratracheal|mediastin|prevascular|aortopulmonary|AP\s+window"),
    ("retroperitoneal node", r"para-?aortic|retroperitoneal|aortocaval|retrocaval|paracaval"),
    ("iliac node", r"iliac|obturator|pelvic\s+side\s*wall"),
    ("inguinal node", r"inguinal|femoral"),
    ("mesenteric node", r"mesenter"),
)
ORGANS = (
    ("lung", r"lobe|lungs?|pulmonary|lingula"),
    ("liver", r"liver|hepatic"),
    ("spleen", r"spleen|splenic"),
    ("bone", r"bones?|osseous|skeletal|vertebra\w*|ribs?|sacr\w+|femur|humer\w+|acetabul\w+|[TL]\d{1,2}"),
    ("adrenal", r"adrenal"),
    ("pancreas", r"pancrea\w*"),
    ("kidney", r"kidneys?|renal"),
    ("prostate", r"prostat\w*"),
    ("thyroid", r"thyroid"),
    ("breast", r"breasts?"),
    ("bowel", r"colon|colonic|bowel|rect\w+|sigmoid|caec\w+|cec\w+"),
    ("stomach", r"stomach|gastric"),
    ("esophagus", r"o?esophag\w*"),
)
MIN_SUV = 2.5  # sentences quoting a lower SUVmax are not labelled (reference section 2, step 5)


@dataclass
class Finding:
    """One report sentence that names a lesion. ``status`` is "ok", "ambiguous" or "skipped"."""

    sentence: str
    suvmax: float | None
    slice: int | None
    side: str | None
    organ: str | None
    series: int | None = None
    status: str = "ok"
    reason: str = ""
    text: str = ""  # the sentence with its numbers removed (what a language model may see)
    suv_mentions: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- parsing


def split_sentences(text: str) -> list[str]:
    """Sentences of a report: split on . ! ? (not decimal points or 'im.'), '*' and newlines."""
    out = []
    for line in re.split(r"[\r\n*]+", text):
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(\[\"'])", line.strip()):
            s = s.strip()
            if re.search(r"[A-Za-z]", s):
                out.append(s)
    return out


def suv_mentions(sentence: str) -> list[dict]:
    """Every SUV value with its kind: 'current', 'prior', 'reference' or 'mean'; 'several' if a list."""
    out, last_end = [], 0
    for m in _SUV_RE.finditer(sentence):
        before = sentence[last_end : m.start()]
        after = sentence[m.end() : m.end() + 30]
        kind_word = (m.group(1) or "").strip().lower() + (m.group(2) or "").lower()
        clause = re.split(r"[,;]", before)[-1]  # words in the same clause as the SUV
        if "mean" in kind_word:
            kind = "mean"
        elif _PRIOR_BEFORE.search(before[-40:]) or _PRIOR_AFTER.search(after):
            kind = "prior"
        elif _REFERENCE.search(clause[-40:]):
            kind = "reference"
        else:
            kind = "current"
        out.append({"value": float(m.group(3)), "kind": kind, "several": bool(m.group(4)), "span": m.span()})
        last_end = m.end()
    return out


def slice_mentions(sentence: str) -> list[dict]:
    """Slice/image references: number, range end (or None), series, plane ('axial' unless stated)."""
    out, spans = [], []
    for m in _SHORTHAND_RE.finditer(sentence):
        out.append({"slice": int(m.group(2)), "end": None, "series": int(m.group(1)), "plane": "axial"})
        spans.append(m.span())
    for m in _SERIES_RE.finditer(sentence):
        end = int(m.group(3)) if m.group(3) else None
        out.append({"slice": int(m.group(2)), "end": end, "series": int(m.group(1)), "plane": "axial"})
        spans.append(m.span())
    for m in _SLICE_RE.finditer(sentence):
        if any(a <= m.start() < b for a, b in spans):
            continue
        plane = (m.group(1) or "axial").lower()
        if (m.group(2) or "").upper() == "CT":
            plane = "ct"  # a CT series number: not the PET's axial numbering
        end = int(m.group(6)) if m.group(6) else None
        out.append({"slice": int(m.group(5)), "end": end, "series": None, "plane": plane})
        spans.append(m.span())
    return out


def find_side(sentence: str) -> str | None:
    words = {w.lower() for w in re.findall(r"\b(right|left|bilateral(?:ly)?)\b", sentence, re.IGNORECASE)}
    if any(w.startswith("bilateral") for w in words):
        return "bilateral"
    return words.pop() if len(words) == 1 else None


_REFERENCE_ORGAN = re.compile(
    r"\b(?:background|reference|normal)\s+(?:liver|hepatic|blood\s*pool|mediastin\w*|spleen)\b", re.IGNORECASE
)


def find_organ(sentence: str) -> str | None:
    """The organ or node station the sentence is about: the first one named, ignoring reference organs
    ("above background liver")."""
    s = _REFERENCE_ORGAN.sub(" ", sentence)
    if _NODE.search(s):
        for name, pattern in NODE_STATIONS:
            if re.search(r"\b(?:" + pattern + r")", s, re.IGNORECASE):
                return name
        return "lymph node"
    hits = [
        (m.start(), name) for name, p in ORGANS if (m := re.search(r"\b(?:" + p + r")\b", s, re.IGNORECASE))
    ]
    return min(hits)[1] if hits else None


def strip_numbers(sentence: str) -> str:
    """The sentence without its SUV values and slice/image references, for the language model."""
    s = _SHORTHAND_RE.sub("", sentence)
    s = _SERIES_RE.sub("", s)
    s = _SLICE_RE.sub(lambda m: "" if (m.group(1) or "axial").lower() == "axial" else m.group(0), s)
    s = _SUV_RE.sub(lambda m: m.group(0)[: m.start(3) - m.start(0)].rstrip(" :=of"), s)
    s = re.sub(r"\b(previously|up from|down from|from|compared to)\s+\d+(?:\.\d+)?\b", r"\1", s, flags=re.I)
    s = re.sub(r"\b(?:at|on|in)\s+(?:the\s+)?(?=[,.;)]|$)", "", s)  # "on image 98" -> "", not "on"
    s = re.sub(r"\(\s*[,;:]?\s*\)", "", s)
    s = re.sub(r"\s+([,.;:)])", r"\1", s)
    s = re.sub(r"([,;:])\s*([,.;:])", r"\2", s)
    s = re.sub(r"\(\s+", "(", s)
    return re.sub(r"\s{2,}", " ", s).strip()


def _pair_count(text: str) -> tuple[int, int]:
    cur = sum(1 for m in suv_mentions(text) if m["kind"] == "current")
    return cur, len([s for s in slice_mentions(text) if s["plane"] == "axial"])


def _clauses(sentence: str) -> list[str]:
    parts = [p.strip() for p in sentence.split(";") if p.strip()]
    if len(parts) > 1 and all(_pair_count(p) == (1, 1) for p in parts):
        return parts
    return [sentence]


def parse_sentence(sentence: str, min_suv: float = MIN_SUV) -> Finding | None:
    """A finding for this (sub)sentence, or None if it names no current SUV with a slice number."""
    suvs = suv_mentions(sentence)
    current = [m for m in suvs if m["kind"] == "current"]
    slices = slice_mentions(sentence)
    if not current or not slices:
        return None
    axial = [s for s in slices if s["plane"] == "axial"]
    f = Finding(
        sentence=sentence,
        suvmax=current[0]["value"] if len(current) == 1 and not current[0]["several"] else None,
        slice=axial[0]["slice"] if len(axial) == 1 and axial[0]["end"] is None else None,
        side=find_side(sentence),
        organ=find_organ(sentence),
        series=axial[0]["series"] if len(axial) == 1 else None,
        text=strip_numbers(sentence),
        suv_mentions=[{k: v for k, v in m.items() if k != "span"} for m in suvs],
    )
    if len(current) > 1 or current[0]["several"]:
        f.status, f.reason = (
            "ambiguous",
            f"{len(current) if len(current) > 1 else 'several'} current SUV values",
        )
    elif len(axial) > 1:
        f.status, f.reason = "ambiguous", f"{len(axial)} slice numbers"
    elif axial and axial[0]["end"] is not None:
        f.status, f.reason = "ambiguous", f"a slice range ({axial[0]['slice']}-{axial[0]['end']})"
    elif not axial:
        f.status, f.reason = (
            "skipped",
            f"no axial slice number (only {slices[0]['plane']} {slices[0]['slice']})",
        )
    elif f.suvmax is not None and f.suvmax < min_suv:
        f.status, f.reason = "skipped", f"SUVmax {f.suvmax} is below {min_suv}"
    return f


def parse_report(text: str, min_suv: float = MIN_SUV) -> list[Finding]:
    """Findings of a report, in order (ambiguous and skipped ones included, with a reason)."""
    out = []
    for sentence in split_sentences(text):
        for clause in _clauses(sentence):
            f = parse_sentence(clause, min_suv)
            if f is not None:
                out.append(f)
    return out


# ----------------------------------------------------------------------------- phantom reports

TEMPLATES = (
    "Hypermetabolic {site}, {size} cm, SUVmax {suv} (image {slice}).",
    "{Site} measuring {size} cm, SUV max {suv} (series {series}, image {slice}).",
    "Focal uptake in the {site} without CT correlate, SUVmax {suv}, slice {slice}.",
    "{Site}, {size} cm short axis, SUV max {suv} (PET image {slice}), previously {prior}.",
    "New {site}, maximum SUV {suv} on axial image {slice}, above background liver (SUVmax {liver}).",
    "{Site} ({series}/{slice}) with SUVmax {suv}, up from {prior}.",
    "FDG-avid {site}, SUVmax {suv}, axial slice {slice}.",
    "Intensely avid {site} (SUVmax {suv}, image {slice}).",
    "Mild uptake in the {site}, SUVmax {suv} (slice {slice}), indeterminate.",
    "{Site} demonstrates an SUV max of {suv} at slice location {slice}.",
    "{Site} with SUVmax of {suv} on image {slice} (previously SUVmax {prior}).",
    "{Site}: SUVmax {suv} (im {slice}), compared to SUVmax {prior} on the prior study.",
)
LUNG_TEMPLATE = "Multiple pulmonary nodules; the largest, {site} {size} cm, SUVmax {suv} (image {slice})."
PAIR_AMBIGUOUS = "{Site} (SUVmax {suv}, image {slice}) and {site2} (SUVmax {suv2}, image {slice2})."
PAIR_SPLIT = "{Site}, SUVmax {suv}, slice {slice}; {site2}, SUVmax {suv2}, slice {slice2}."
RANGE_TEMPLATE = "{Site} spanning images {slice}-{slice_end}, SUVmax {suv}."


def _fill(template: str, les, rng, levels, **extra) -> str:
    prior = les.suvmax * rng.uniform(0.4, 1.6)
    if abs(prior - les.suvmax) < 0.3:
        prior = les.suvmax + 1.0
    phrase = les.phrase
    if les.stated_side != les.site.side:  # a laterality typo
        phrase = re.sub(r"\b(right|left)\b", les.stated_side, phrase)
    values = {
        "site": phrase,
        "Site": phrase[0].upper() + phrase[1:],
        "size": f"{les.diameter_mm / 10:.1f}",
        "suv": f"{les.stated_suvmax:.1f}",
        "slice": les.slice,
        "series": int(rng.integers(2, 7)),
        "prior": f"{prior:.1f}",
        "liver": f"{levels['liver'] * rng.uniform(1.1, 1.4):.1f}",
        **extra,
    }
    return template.format(**values)


def compose_report(lesions, levels: dict, rng, n_slices: int, errors: float = 0.0) -> str:
    """A findings section for a phantom: one or two sentences per lesion in varied phrasings, with
    distractors (priors, reference organs, series/image shorthand, multi-lesion and range sentences,
    sub-threshold uptake). A fraction ``errors`` of the single-lesion sentences carry a reporting
    error, as real reports do: an SUVmax that differs from ours by 0.3-0.8 (another workstation,
    SULmax) or a laterality typo; these should come out "not_found", never at a wrong place.
    Sets each lesion's ``sentence``, ``expect`` and stated values."""
    sentences: list[str] = []
    todo = list(lesions)
    rng.shuffle(todo)
    while todo:
        les = todo.pop()
        roll = rng.random()
        if todo and roll < 0.12:  # two lesions in one sentence: ambiguous unless split by a semicolon
            other = todo.pop()
            split = rng.random() < 0.5
            s = _fill(PAIR_SPLIT if split else PAIR_AMBIGUOUS, les, rng, levels, site2=other.phrase,
                      suv2=f"{other.stated_suvmax:.1f}", slice2=other.slice)  # fmt: skip
            for x, part in zip((les, other), s.split(";") if split else (s, s), strict=True):
                x.sentence, x.expect = part.strip(), "located" if split else "ambiguous"
        elif roll < 0.16:
            end = min(les.slice + int(rng.integers(3, 9)), n_slices)
            s = _fill(RANGE_TEMPLATE, les, rng, levels, slice_end=end)
            les.sentence, les.expect = s, "ambiguous"
        else:
            if rng.random() < errors:
                les.expect = "not_found"
                if les.site.side in ("left", "right") and rng.random() < 0.5:
                    les.stated_side = "left" if les.site.side == "right" else "right"
                else:
                    sign = 1.0 if les.suvmax < 3.4 or rng.random() < 0.5 else -1.0
                    les.stated_suvmax = round(les.suvmax + sign * rng.uniform(0.3, 0.8), 1)
            t = LUNG_TEMPLATE if les.site.organ == "lung" and rng.random() < 0.3 else None
            s = _fill(t or TEMPLATES[int(rng.integers(len(TEMPLATES)))], les, rng, levels)
            les.sentence = s
        sentences.append(s)
    side = lambda: rng.choice(["right", "left"])  # noqa: E731
    distractors = [
        "Physiologic tracer distribution in the brain, myocardium, kidneys and urinary bladder.",
        f"Background liver SUVmean {levels['liver']:.1f}; "
        f"mediastinal blood pool SUVmax {rng.uniform(1.5, 2.2):.1f}.",
        f"Mild nonspecific uptake in the {side()} shoulder joint, SUVmax "
        f"{rng.uniform(1.5, 2.4):.1f} (image {int(rng.integers(1, n_slices + 1))}).",
        f"The {side()} hilar activity is best seen on coronal image {int(rng.integers(20, 60))}.",
        "No suspicious osseous lesions elsewhere.",
    ]
    for d in distractors:
        if rng.random() < 0.6:
            sentences.insert(int(rng.integers(len(sentences) + 1)), d)
    return (
        "FINDINGS:\n" + "\n".join(sentences) + "\n\nIMPRESSION:\nMetabolically active disease as described."
    )
