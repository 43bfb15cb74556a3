"""Captioned procedural shape scenes with held-out compositions (the `shapes` test bed).

A scene puts 1-3 objects (configurable) in the slots of a 3x3 grid on a plain or subtly textured dark
background. Every object has a shape, a colour and a size; its caption names all three plus the object's
slot, either directly ("in the top left") or through an adjacent, already placed object ("above it"), so
the caption determines the 27 per-slot labels exactly (``parse_caption`` recovers them). Items are made
on the fly from ``(seed, split, index)``: any dataset length costs nothing, and the same triple gives
the same item in every process, worker and access order. See ``docs/data.md`` for the grammar and splits.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "heart")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SIZES = ("small", "large")
# Canonical slot names, row-major (slot = 3 * row + column).
POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
BACKGROUNDS = ("black", "grey", "striped", "checkered", "noisy")
PLAIN_BACKGROUNDS = (0, 1)
# "all" draws from every combination (held-out ones included), with its own seeds: it is for training
# judges that must recognise held-out compositions, never for the models those judges score.
SPLITS = ("train", "test", "heldout", "all")
NUM_SLOTS = 9

# Saturated colours (and white) far apart in hue, all far from the dark neutral backgrounds.
RGB = {
    "red": (230, 35, 35),
    "orange": (255, 140, 0),
    "yellow": (245, 230, 40),
    "green": (30, 185, 50),
    "cyan": (40, 220, 235),
    "blue": (40, 80, 255),
    "purple": (165, 45, 215),
    "white": (245, 245, 245),
}

# (shape, colour) combinations that never appear in `train`/`test` (each shape and colour at most once,
# so every shape and every colour is still seen with most partners).
HELDOUT_COMBOS = (
    ("star", "red"),
    ("ring", "blue"),
    ("heart", "green"),
    ("triangle", "yellow"),
    ("cross", "purple"),
    ("square", "cyan"),
)
# Unordered pairs of (shape, colour) objects that never share a scene in `train`/`test`; each object on
# its own is an ordinary training combination.
HELDOUT_PAIRS = (
    (("circle", "red"), ("square", "blue")),
    (("triangle", "green"), ("diamond", "orange")),
    (("heart", "white"), ("star", "yellow")),
    (("ring", "purple"), ("cross", "cyan")),
    (("diamond", "blue"), ("heart", "red")),
    (("star", "cyan"), ("ring", "yellow")),
)
_HELDOUT_COMBO_SET = frozenset(HELDOUT_COMBOS)
_HELDOUT_PAIR_SET = frozenset(frozenset(p) for p in HELDOUT_PAIRS)
_ALL_COMBOS = tuple((s, c) for s in SHAPES for c in COLOURS)
_TRAIN_COMBOS = tuple(sc for sc in _ALL_COMBOS if sc not in _HELDOUT_COMBO_SET)

# Geometry on the native 64x64 canvas; resolution 32 is its exact 2x2 area downsample, so a scene
# is the same scene at both resolutions. Slot edges 0/21/42/64; boxes leave >= 2 px between neighbours.
_CANVAS = 64
_EDGES = (0, 21, 42, 64)
_BOX = {"small": 12, "large": 18}  # side in px: area ratio 0.44, clearly two sizes
_MARGIN = 1
_SUPERSAMPLE = 8
RESOLUTIONS = (32, 64)
_SPLIT_CODE = {"train": 0, "test": 1, "heldout": 2, "all": 3}


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Args:
        slot: grid cell 0..8, row-major (0 top left, 4 centre, 8 bottom right).
        shape: one of ``SHAPES``.
        colour: one of ``COLOURS``.
        size: one of ``SIZES``.
        jitter: (x, y) placement inside the slot's free space, each in [0, 1] (0.5 = centred).
    """

    slot: int
    shape: str
    colour: str
    size: str
    jitter: tuple[float, float] = (0.5, 0.5)

    def __post_init__(self):
        if not 0 <= self.slot < NUM_SLOTS:
            raise ConfigError(f"slot must be 0..8, got {self.slot}")
        for value, vocab, what in ((self.shape, SHAPES, "shape"), (self.colour, COLOURS, "colour")):
            if value not in vocab:
                raise ConfigError(f"unknown {what} {value!r}: use one of {', '.join(vocab)}")
        if self.size not in SIZES:
            raise ConfigError(f"unknown size {self.size!r}: use small or large")

    @property
    def row(self) -> int:
        return self.slot // 3

    @property
    def col(self) -> int:
        return self.slot % 3


@dataclass(frozen=True)
class Scene:
    """A scene of objects in distinct slots of the 3x3 grid.

    Args:
        objects: the objects, in distinct slots.
        background: index into ``BACKGROUNDS``.
        texture_seed: phase / orientation of a textured background (ignored for plain ones).
    """

    objects: tuple[SceneObject, ...]
    background: int = 0
    texture_seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        slots = [o.slot for o in self.objects]
        if len(set(slots)) != len(slots):
            raise ConfigError(f"scene objects must be in distinct slots, got slots {slots}")
        if not 0 <= self.background < len(BACKGROUNDS):
            raise ConfigError(f"background must be 0..{len(BACKGROUNDS) - 1}, got {self.background}")

    def render(self, resolution: int = 64) -> torch.Tensor:
        """The scene as a float32 CHW RGB tensor in [-1, 1] at ``resolution`` (32 or 64)."""
        return (
            torch.from_numpy(render_array(self, resolution)).permute(2, 0, 1).mul(2.0).sub(1.0).contiguous()
        )

    def caption(self, rng: np.random.Generator | int | None = None) -> str:
        """One random caption from the grammar (see ``docs/data.md``); it determines all slot labels."""
        return make_caption(self, np.random.default_rng(rng))

    def labels(self) -> dict[str, torch.Tensor]:
        """Per-slot labels: ``shape``, ``colour``, ``size`` LongTensor[9] (0 = empty)."""
        return labels_from_scene(self)

    def heldout_parts(self) -> list[str]:
        """Held-out combinations and pairs in the scene, e.g. ``["red star", "red circle + blue square"]``."""
        found = [f"{o.colour} {o.shape}" for o in self.objects if (o.shape, o.colour) in _HELDOUT_COMBO_SET]
        combos = sorted({(o.shape, o.colour) for o in self.objects})
        for i, a in enumerate(combos):
            for b in combos[i + 1 :]:
                if frozenset((a, b)) in _HELDOUT_PAIR_SET:
                    found.append(f"{a[1]} {a[0]} + {b[1]} {b[0]}")
        return found


def labels_from_scene(scene: Scene) -> dict[str, torch.Tensor]:
    """Per-slot LongTensor[9] labels: shape 1..8, colour 1..8, size 1 small / 2 large; 0 = empty slot."""
    shape, colour, size = (torch.zeros(NUM_SLOTS, dtype=torch.long) for _ in range(3))
    for o in scene.objects:
        shape[o.slot] = SHAPES.index(o.shape) + 1
        colour[o.slot] = COLOURS.index(o.colour) + 1
        size[o.slot] = SIZES.index(o.size) + 1
    return {"shape": shape, "colour": colour, "size": size}


def scene_from_labels(shape, colour, size, background: int = 0) -> Scene:
    """Inverse of ``labels_from_scene``: three length-9 integer sequences (tensors, arrays or lists)."""
    shape, colour, size = (np.asarray(x, dtype=np.int64).reshape(-1) for x in (shape, colour, size))
    if not shape.shape == colour.shape == size.shape == (NUM_SLOTS,):
        raise ConfigError(f"labels must have 9 entries each, got {shape.size}, {colour.size}, {size.size}")
    objects = []
    for slot in range(NUM_SLOTS):
        present = (shape[slot] != 0, colour[slot] != 0, size[slot] != 0)
        if not any(present):
            continue
        if not all(present):
            raise ConfigError(f"slot {slot}: shape, colour and size must all be 0 (empty) or all set")
        if shape[slot] > len(SHAPES) or colour[slot] > len(COLOURS) or size[slot] > len(SIZES):
            raise ConfigError(f"slot {slot}: label out of range")
        objects.append(
            SceneObject(slot, SHAPES[shape[slot] - 1], COLOURS[colour[slot] - 1], SIZES[size[slot] - 1])
        )
    return Scene(tuple(objects), background=background)


# ----------------------------------------------------------------------------------------------- render


def _inside_polygon(x: np.ndarray, y: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd ray test for every point (used once per shape and size, then cached)."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1], strict=True):
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0 + 1e-12)
        inside ^= crosses & (x < x_at)
    return inside


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Is (u, v) in [-1, 1]^2 (v pointing down) inside the shape? Shapes fill their box, unrotated."""
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1.0
    if shape == "ring":  # thick rim so the hole survives at 6 px
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.86
    if shape == "diamond":
        return abs(u) + abs(v) <= 1.0
    if shape == "cross":
        return ((abs(u) <= 0.34) & (abs(v) <= 0.97)) | ((abs(v) <= 0.34) & (abs(u) <= 0.97))
    if shape == "triangle":
        return _inside_polygon(u, v, [(0.0, -0.95), (0.98, 0.8), (-0.98, 0.8)])
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.05, 0.45)
        verts = [(r * np.cos(a), r * np.sin(a) + 0.1) for r, a in zip(radii, angles, strict=True)]
        return _inside_polygon(u, v, verts)
    if shape == "heart":
        x, y = u * 1.18, -v * 1.18 + 0.12
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    raise ValueError(shape)


@cache
def shape_mask(shape: str, size: str) -> np.ndarray:
    """Anti-aliased coverage (float32 [box, box] in [0, 1]) by 8x8 supersampling."""
    box = _BOX[size]
    n = box * _SUPERSAMPLE
    t = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    v, u = np.meshgrid(t, t, indexing="ij")
    inside = _shape_inside(shape, u, v).astype(np.float32)
    return inside.reshape(box, _SUPERSAMPLE, box, _SUPERSAMPLE).mean(axis=(1, 3))


@cache
def _grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float32)
    return x, y


@cache
def _noise_field() -> np.ndarray:
    """A fixed smooth noise field (2x the canvas, values ~[-1, 1]) that noisy backgrounds crop from."""
    rng = np.random.default_rng(12345)
    coarse = rng.standard_normal((2 * _CANVAS // 8 + 1, 2 * _CANVAS // 8 + 1)).astype(np.float32)
    t = torch.from_numpy(coarse)[None, None]
    fine = torch.nn.functional.interpolate(t, scale_factor=8, mode="bicubic", align_corners=True)[0, 0]
    fine = fine[: 2 * _CANVAS, : 2 * _CANVAS].numpy()
    fine += 0.5 * rng.standard_normal(fine.shape).astype(np.float32)  # a little grain on top
    return np.clip(fine / 1.5, -1.0, 1.0)


def _background(kind: int, texture_seed: int) -> np.ndarray:
    """HxWx3 float32 in [0, 1]. Textures are dark and low-contrast (+-0.04) so objects stay clear."""
    name = BACKGROUNDS[kind]
    if name == "black":
        return np.broadcast_to(np.float32([0.05, 0.05, 0.06]), (_CANVAS, _CANVAS, 3)).copy()
    if name == "grey":
        return np.broadcast_to(np.float32([0.27, 0.27, 0.29]), (_CANVAS, _CANVAS, 3)).copy()
    x, y = _grid()
    phase = texture_seed % 8
    if name == "striped":
        direction = ((x + y), (x - y), x, y)[(texture_seed // 8) % 4]
        tex = np.where(((direction + phase) // 4) % 2 == 0, 1.0, -1.0)
        base = np.float32([0.16, 0.16, 0.19])
    elif name == "checkered":
        tex = np.where((((x + phase) // 8) + ((y + phase) // 8)) % 2 == 0, 1.0, -1.0)
        base = np.float32([0.17, 0.17, 0.17])
    else:  # noisy
        oy, ox = (texture_seed // 64) % _CANVAS, texture_seed % _CANVAS
        tex = _noise_field()[oy : oy + _CANVAS, ox : ox + _CANVAS]
        base = np.float32([0.15, 0.16, 0.15])
    return (base + 0.04 * tex[..., None]).astype(np.float32)


def _offset(start: int, end: int, box: int, jitter: float) -> int:
    free = end - start - box
    margin = _MARGIN if free >= 2 * _MARGIN else 0
    return start + margin + int(round(jitter * (free - 2 * margin)))


def render_array(scene: Scene, resolution: int = 64) -> np.ndarray:
    """The scene as HxWx3 float32 in [0, 1] (RGB). ``Scene.render`` wraps this as a [-1, 1] tensor."""
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"shapes resolution must be 32 or 64, got {resolution}")
    image = _background(scene.background, scene.texture_seed)
    for o in scene.objects:
        alpha = shape_mask(o.shape, o.size)[..., None]
        box = alpha.shape[0]
        x0 = _offset(_EDGES[o.col], _EDGES[o.col + 1], box, o.jitter[0])
        y0 = _offset(_EDGES[o.row], _EDGES[o.row + 1], box, o.jitter[1])
        patch = image[y0 : y0 + box, x0 : x0 + box]
        patch += alpha * (_COLOUR_ARRAY[o.colour] - patch)
    if resolution == 32:
        image = 0.25 * (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2])
    return image


_COLOUR_ARRAY = {name: np.float32(rgb) / 255.0 for name, rgb in RGB.items()}


# ------------------------------------------------------------------------------------------------ grammar

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"cyan": ("cyan", "turquoise"), "purple": ("purple", "violet")}
SHAPE_WORDS = {s: (s,) for s in SHAPES} | {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "ring": ("ring", "hoop"),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
# Position phrases per slot; the parser accepts any "in/at/on the <name>" for these names.
POSITION_WORDS = {
    0: ("in the top left", "at the top left", "in the top left corner", "in the upper left"),
    1: ("at the top", "in the top middle", "in the upper middle"),
    2: ("in the top right", "at the top right", "in the top right corner", "in the upper right"),
    3: ("on the left", "in the middle left", "at the left"),
    4: ("in the centre", "in the middle", "in the center"),
    5: ("on the right", "in the middle right", "at the right"),
    6: ("in the bottom left", "at the bottom left", "in the bottom left corner", "in the lower left"),
    7: ("at the bottom", "in the bottom middle", "in the lower middle"),
    8: ("in the bottom right", "at the bottom right", "in the bottom right corner", "in the lower right"),
}
# Relations always mean the ADJACENT slot: "above" = one row up, same column; "next to" = the middle
# column of the same row, used only when the other object sits in an edge column (so it is unique).
RELATION_WORDS = {
    "above": ("above", "directly above", "just above"),
    "below": ("below", "under", "beneath", "directly below"),
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "next": ("next to", "beside"),
}
BACKGROUND_WORDS = {
    0: ("on a black background", "on a plain black background"),
    1: ("on a grey background", "on a plain grey background"),
    2: ("on a striped background",),
    3: ("on a checkered background", "on a chequered background"),
    4: ("on a noisy background", "on a speckled background"),
}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_PREFIXES = ("", "", "", "", "there is ", "an image of ", "a picture of ")
_COUNT_PREFIXES = ("{n} {things}: ", "a scene with {n} {things}: ", "there {are} {n} {things}: ")


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _relations(child: SceneObject, parent: SceneObject) -> list[str]:
    """Relation words (keys of RELATION_WORDS) that place ``child`` exactly, given ``parent``'s slot."""
    dr, dc = child.row - parent.row, child.col - parent.col
    if dc == 0 and dr == -1:
        return ["above"]
    if dc == 0 and dr == 1:
        return ["below"]
    if dr == 0 and abs(dc) == 1:
        side = ["left" if dc == -1 else "right"]
        return side + ["next"] if parent.col != 1 else side
    return []


def _describe(o: SceneObject, rng: np.random.Generator) -> str:
    """'a big red disc': article, size, colour and shape words, synonyms drawn at random."""
    words = " ".join(_pick(rng, table[key]) for table, key in
                     ((SIZE_WORDS, o.size), (COLOUR_WORDS, o.colour), (SHAPE_WORDS, o.shape)))  # fmt: skip
    first = "one" if rng.random() < 0.1 else _article(words)
    return f"{first} {words}"


def _reference(o: SceneObject, scene: Scene, rng: np.random.Generator) -> str | None:
    """'the <colour> <shape>' (or with size) if that names exactly one object of the scene."""
    same = [p for p in scene.objects if (p.shape, p.colour) == (o.shape, o.colour)]
    colour, shape = _pick(rng, COLOUR_WORDS[o.colour]), _pick(rng, SHAPE_WORDS[o.shape])
    if len(same) == 1:
        return f"the {colour} {shape}"
    if sum(p.size == o.size for p in same) == 1:
        return f"the {_pick(rng, SIZE_WORDS[o.size])} {colour} {shape}"
    return None


def make_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Random caption naming every object's size, colour, shape and (direct or relative) slot."""
    objs = list(scene.objects)
    if not objs:
        return "an empty scene"
    order = [int(i) for i in rng.permutation(len(objs))]
    # Each object is either placed absolutely (a root) or relative to an adjacent earlier object.
    parent: dict[int, int] = {}
    for k, i in enumerate(order):
        options = [j for j in order[:k] if _relations(objs[i], objs[j])]
        if options and rng.random() < 0.6:
            parent[i] = _pick(rng, options)
    children = {i: [c for c in order if parent.get(c) == i] for i in order}

    clauses: list[str] = []
    last_new: list[int] = []  # mention order of new objects, so "it" can be checked

    def place_child(c: int, p: int) -> None:
        rel = _pick(rng, RELATION_WORDS[_pick(rng, _relations(objs[c], objs[p]))])
        ref = "it" if last_new and last_new[-1] == p and rng.random() < 0.6 else None
        ref = ref or _reference(objs[p], scene, rng)
        if ref is None:  # parent cannot be named unambiguously: place this one directly instead
            clauses.append(f"{_describe(objs[c], rng)} {_pick(rng, POSITION_WORDS[objs[c].slot])}")
        else:
            joiner = "with " if ref == "it" and rng.random() < 0.3 else ""
            clauses.append(f"{joiner}{_describe(objs[c], rng)} {rel} {ref}")
        last_new.append(c)
        for g in children[c]:
            place_child(g, c)

    for i in order:
        if i in parent:
            continue
        pos = _pick(rng, POSITION_WORDS[objs[i].slot])
        kids = children[i]
        if kids and rng.random() < 0.35:
            # Child first: "a red star above a blue ring(, which is) in the centre".
            c, kids = kids[0], kids[1:]
            rel = _pick(rng, RELATION_WORDS[_pick(rng, _relations(objs[c], objs[i]))])
            which = _pick(rng, (" ", ", which is "))
            clauses.append(f"{_describe(objs[c], rng)} {rel} {_describe(objs[i], rng)}{which}{pos}")
            last_new += [c, i]
            for g in children[c]:
                place_child(g, c)
        else:
            clauses.append(f"{_describe(objs[i], rng)} {pos}")
            last_new.append(i)
        for c in kids:
            place_child(c, i)

    text = clauses[0]
    for k, clause in enumerate(clauses[1:], start=2):
        if clause.startswith("with "):
            sep = _pick(rng, (" ", ", "))
        else:
            sep = _pick(rng, (" and ", ", and ")) if k == len(clauses) else ", "
        text += sep + clause

    n = len(objs)
    if rng.random() < 0.25:
        things = _pick(rng, ("shape", "object")) + ("s" if n > 1 else "")
        template = _pick(rng, _COUNT_PREFIXES)
        text = template.format(n=_NUMBER_WORDS[n], things=things, are="are" if n > 1 else "is") + text
    else:
        text = _pick(rng, _PREFIXES) + text
    if rng.random() < 0.3:
        text += " " + _pick(rng, BACKGROUND_WORDS[scene.background])
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:] + "."
    return text


# --------------------------------------------------------------------------------------------- vocabulary


@cache
def vocabulary() -> tuple[str, ...]:
    """Every word the caption grammar uses (sorted): what a generator trained on these captions knows."""
    phrases = [w for table in (SIZE_WORDS, COLOUR_WORDS, SHAPE_WORDS, POSITION_WORDS, RELATION_WORDS,
                               BACKGROUND_WORDS) for words in table.values() for w in words]  # fmt: skip
    phrases += [*_NUMBER_WORDS, *_PREFIXES, *_COUNT_PREFIXES, *_POS_NAMES, "an empty scene", "with", "and",
                "which is", "the", "a", "an", "it", "shape shapes object objects", "corner"]  # fmt: skip
    words = {w for p in phrases for w in re.findall(r"[a-z]+", p.replace("{are}", "is are"))}
    return tuple(sorted(words - {"n", "things"}))


def unknown_words(prompt: str) -> list[str]:
    """The words of ``prompt`` (lower-cased, in order, once each) that the caption grammar never uses."""
    known, seen = set(vocabulary()), []
    for word in re.findall(r"[a-z]+", prompt.lower()):
        if word not in known and word not in seen:
            seen.append(word)
    return seen


def vocabulary_note(prompt: str) -> str | None:
    """One line naming the unknown words of ``prompt`` and the words to use instead (None: all known)."""
    unknown = unknown_words(prompt)
    if not unknown:
        return None
    quoted = ", ".join(f"'{w}'" for w in unknown)
    return (
        f"not understood: {quoted}; the model knows shapes ({', '.join(SHAPES)}), colours "
        f"({', '.join(COLOURS)}), sizes (small, large), places (top left ... bottom right, or above / "
        f"below / left of / right of / next to another object) and backgrounds ({', '.join(BACKGROUNDS)})"
    )


# ------------------------------------------------------------------------------------------------- parser


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


def _inverse(table: dict) -> dict[str, object]:
    return {w: key for key, words in table.items() for w in words}


_SIZE_OF, _COLOUR_OF, _SHAPE_OF = _inverse(SIZE_WORDS), _inverse(COLOUR_WORDS), _inverse(SHAPE_WORDS)
_REL_OF = _inverse({k: tuple(w.removeprefix("directly ").removeprefix("just ") for w in v) for k, v in
                    RELATION_WORDS.items()})  # fmt: skip
_POS_NAMES = {
    "top left": 0, "upper left": 0, "top": 1, "top middle": 1, "upper middle": 1, "top centre": 1,
    "top right": 2, "upper right": 2, "left": 3, "middle left": 3, "centre left": 3,
    "centre": 4, "center": 4, "middle": 4, "right": 5, "middle right": 5, "centre right": 5,
    "bottom left": 6, "lower left": 6, "bottom": 7, "bottom middle": 7, "lower middle": 7,
    "bottom centre": 7, "bottom right": 8, "lower right": 8,
}  # fmt: skip
_BG_OF = {w.split(" ")[-2]: k for k, words in BACKGROUND_WORDS.items() for w in words}
_S, _C, _H = (_alternation(t) for t in (_SIZE_OF, _COLOUR_OF, _SHAPE_OF))
_MENTION = re.compile(
    rf"\b(?:(?P<art>a|an|one)\s+(?P<size>{_S})\s+(?P<colour>{_C})\s+(?P<shape>{_H})"
    rf"|the\s+(?:(?P<rsize>{_S})\s+)?(?P<rcolour>{_C})\s+(?P<rshape>{_H})|(?P<it>it))\b"
)
_REL_AT_END = re.compile(rf"\b(?:directly\s+|just\s+)?(?P<rel>{_alternation(_REL_OF)})\s*$")
_POS = re.compile(rf"\b(?:in|at|on)\s+the\s+(?P<pos>{_alternation(_POS_NAMES)})(?:\s+corner)?\b")
_BG = re.compile(rf"\bon\s+a\s+(?:plain\s+)?(?P<bg>{_alternation(_BG_OF)})\s+background\b")
_STEP = {"above": (-1, 0), "below": (1, 0), "left": (0, -1), "right": (0, 1)}


def mention_ends(text: str) -> list[int]:
    """Character offsets in ``text`` where each newly introduced object's noun ends ("a big red disc"
    -> after "disc"), in mention order: the k-th is the k-th object ``parse_caption`` returns."""
    return [m.end("shape") for m in _MENTION.finditer(text.lower()) if m["art"] is not None]


def caption_background(text: str) -> int | None:
    """The background a caption names (index into ``BACKGROUNDS``), or ``None`` if it names none."""
    bg = _BG.search(re.sub(r"[^a-z, ]+", " ", text.lower()))
    return _BG_OF[bg["bg"]] if bg else None


def parse_caption(text: str) -> Scene | None:
    """Recover the scene's objects and slots from a caption of this grammar; ``None`` if it cannot.

    Jitter and texture are not in captions, so they come back as defaults (centred objects, seed 0).
    """
    text = re.sub(r"[^a-z, ]+", " ", text.lower())
    mentions = list(_MENTION.finditer(text))
    if not mentions and re.search(r"\bempty scene\b", text):
        return Scene(())
    objects: list[dict] = []  # new objects in mention order
    links: list[tuple[int, str, int | str]] = []  # (object, relation, target mention position)
    for k, m in enumerate(mentions):
        if m["art"] is None:
            continue
        index = len(objects)
        objects.append({"shape": _SHAPE_OF[m["shape"]], "colour": _COLOUR_OF[m["colour"]],
                        "size": _SIZE_OF[m["size"]], "slot": None})  # fmt: skip
        gap = text[m.end() : mentions[k + 1].start()] if k + 1 < len(mentions) else text[m.end() :]
        rel = _REL_AT_END.search(gap)
        if rel and k + 1 < len(mentions):
            links.append((index, _REL_OF[rel["rel"]], k + 1))
        elif pos := _POS.search(gap):
            objects[index]["slot"] = _POS_NAMES[pos["pos"]]
        else:
            return None
    # Resolve relation targets to objects: a new object, "it" (the latest object before the subject),
    # or "the <size> <colour> <shape>" (the unique object that matches).
    new_index = {}
    for k, m in enumerate(mentions):
        if m["art"] is not None:
            new_index[k] = len(new_index)
    resolved = []
    for index, rel, k in links:
        m = mentions[k]
        if m["art"] is not None:
            target = new_index[k]
        elif m["it"]:
            if index == 0:
                return None
            target = index - 1
        else:
            want = {"shape": _SHAPE_OF[m["rshape"]], "colour": _COLOUR_OF[m["rcolour"]]}
            if m["rsize"]:
                want["size"] = _SIZE_OF[m["rsize"]]
            hits = [j for j, o in enumerate(objects) if all(o[key] == v for key, v in want.items())]
            if len(hits) != 1:
                return None
            target = hits[0]
        resolved.append((index, rel, target))
    for _ in range(len(objects)):  # propagate slots along relations
        for index, rel, target in resolved:
            if objects[index]["slot"] is not None or objects[target]["slot"] is None:
                continue
            row, col = divmod(objects[target]["slot"], 3)
            if rel == "next":
                if col == 1:
                    return None
                col = 1
            else:
                row, col = row + _STEP[rel][0], col + _STEP[rel][1]
            if not (0 <= row < 3 and 0 <= col < 3):
                return None
            objects[index]["slot"] = 3 * row + col
    if not objects or any(o["slot"] is None for o in objects):
        return None
    bg = _BG.search(text)
    try:
        return Scene(tuple(SceneObject(**o) for o in objects), background=_BG_OF[bg["bg"]] if bg else 0)
    except ConfigError:  # e.g. two objects in one slot
        return None


# ------------------------------------------------------------------------------------------------ sampling


def _sample_train_combo(rng: np.random.Generator, taken: list[tuple[str, str]]) -> tuple[str, str]:
    while True:  # rejection is rare: a held-out pair needs one specific partner among 58 combos
        combo = _pick(rng, _TRAIN_COMBOS)
        if all(frozenset((combo, t)) not in _HELDOUT_PAIR_SET for t in taken):
            return combo


def sample_scene(
    rng: np.random.Generator, split: str = "train", min_objects: int = 1, max_objects: int = 3,
    textured: bool = True,
) -> Scene:  # fmt: skip
    """Draw a random scene for ``split``: train/test avoid every held-out combination and pair; heldout
    scenes contain at least one (a combination if there is one object, else either kind); "all" draws
    every object uniformly from all combinations."""
    n = int(rng.integers(min_objects, max_objects + 1))
    if split == "heldout":
        if n == 1 or rng.random() < 0.5:
            combos = [_pick(rng, HELDOUT_COMBOS)]
        else:
            combos = list(_pick(rng, HELDOUT_PAIRS))
        while len(combos) < n:
            combos.append(_pick(rng, _ALL_COMBOS))
        combos = [combos[i] for i in rng.permutation(n)]
    elif split == "all":
        combos = [_pick(rng, _ALL_COMBOS) for _ in range(n)]
    else:
        combos = []
        for _ in range(n):
            combos.append(_sample_train_combo(rng, combos))
    slots = rng.choice(NUM_SLOTS, size=n, replace=False)
    sizes = rng.integers(0, 2, size=n)
    jitter = rng.random((n, 2))
    objects = tuple(
        SceneObject(int(slots[i]), shape, colour, SIZES[sizes[i]], (float(jitter[i, 0]), float(jitter[i, 1])))
        for i, (shape, colour) in enumerate(combos)
    )
    background = int(rng.integers(len(BACKGROUNDS) if textured else len(PLAIN_BACKGROUNDS)))
    return Scene(objects, background=background, texture_seed=int(rng.integers(1 << 16)))


def hard_negative(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene made wrong in one composition (NegCLIP, Yuksekgonul et al. 2023): two objects'
    colours swapped (two or more objects of different colours), else two objects' slots swapped,
    else the single object's shape replaced (shape is what a CLIP of these scenes learns last).
    Its caption is a hard negative: the same words as the true caption, bound differently."""
    objs = list(scene.objects)
    pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))]
    colour_pairs = [(i, j) for i, j in pairs if objs[i].colour != objs[j].colour]
    slot_pairs = [(i, j) for i, j in pairs if (objs[i].shape, objs[i].size) != (objs[j].shape, objs[j].size)]
    if colour_pairs:
        i, j = colour_pairs[int(rng.integers(len(colour_pairs)))]
        objs[i], objs[j] = replace(objs[i], colour=objs[j].colour), replace(objs[j], colour=objs[i].colour)
    elif slot_pairs:
        i, j = slot_pairs[int(rng.integers(len(slot_pairs)))]
        objs[i], objs[j] = replace(objs[i], slot=objs[j].slot), replace(objs[j], slot=objs[i].slot)
    else:
        i = int(rng.integers(len(objs)))
        others = [sh for sh in SHAPES if sh != objs[i].shape]
        objs[i] = replace(objs[i], shape=others[int(rng.integers(len(others)))])
    return replace(scene, objects=tuple(objs))


class ShapesDataset(Dataset):
    """Captioned shape scenes generated on the fly from ``(seed, split, index)``.

    Args:
        split: ``"train"``, ``"test"`` (same distribution, other seeds), ``"heldout"`` (every scene has a
            held-out combination or pair) or ``"all"`` (every combination; for training judges only).
        size: number of items (default 50,000 for train and all, 2,000 otherwise); any length is free.
        resolution: 64 (default) or 32 (the exact 2x2 area downsample of 64).
        min_objects: fewest objects per scene (>= 1).
        max_objects: most objects per scene (<= 9).
        seed: base seed; the same (seed, split, index) always gives the same item.
        textured: also use the striped / checkered / noisy backgrounds (else black and grey only).
        render: draw the image (False: captions and labels only, e.g. to train a prompt parser).
        negatives: also give ``negative``, the caption of ``hard_negative(scene)`` in the same phrasing
            (a CLIP's composition-aware hard negative).

    Items are dicts: ``image`` float32 [3, R, R] in [-1, 1]; ``shape``, ``colour``, ``size`` LongTensor[9]
    per slot (0 = empty); ``caption`` str; ``n_objects`` int; ``background`` int (index into BACKGROUNDS).
    """

    def __init__(
        self, split: str = "train", size: int | None = None, resolution: int = 64, min_objects: int = 1,
        max_objects: int = 3, seed: int = 0, textured: bool = True, render: bool = True,
        negatives: bool = False,
    ):  # fmt: skip
        if split not in SPLITS:
            raise ConfigError(f"unknown shapes split {split!r}: use one of {', '.join(SPLITS)}")
        if resolution not in RESOLUTIONS:
            raise ConfigError(f"shapes resolution must be 32 or 64, got {resolution}")
        if not 1 <= min_objects <= max_objects <= NUM_SLOTS:
            raise ConfigError(f"need 1 <= min_objects <= max_objects <= 9, got {min_objects}, {max_objects}")
        size = (50_000 if split in ("train", "all") else 2_000) if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"shapes size must be a positive integer, got {size!r}")
        self.split, self.size, self.resolution, self.seed = split, size, resolution, int(seed)
        self.min_objects, self.max_objects, self.textured = min_objects, max_objects, textured
        self._render = bool(render)  # private: not part of a latent cache's identity
        # private, as _render: an extra caption, not part of a latent cache's identity (images unchanged)
        self._negatives = bool(negatives)

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> tuple[Scene, np.random.Generator]:
        """The scene of item ``index`` and the generator positioned for its caption."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], int(index)])
        return sample_scene(rng, self.split, self.min_objects, self.max_objects, self.textured), rng

    def __getitem__(self, index: int) -> dict:
        scene, rng = self.scene(index)
        phrasing = copy.deepcopy(rng) if self._negatives else None  # the negative's caption: same phrasing
        item = {
            **({"image": scene.render(self.resolution)} if self._render else {}),
            **labels_from_scene(scene),
            "caption": scene.caption(rng),
            "n_objects": len(scene.objects),
            "background": scene.background,
        }
        if self._negatives:
            wrong = hard_negative(
                scene, np.random.default_rng([self.seed, _SPLIT_CODE[self.split], int(index), 1])
            )
            item["negative"] = wrong.caption(phrasing)
        return item
