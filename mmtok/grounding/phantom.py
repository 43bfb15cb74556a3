"""Synthetic whole-body FDG PET/CT phantoms with lesions, a free-text report and the truth.

A case is drawn from ``numpy.random.default_rng([seed, index])``, so ``(seed, index)`` always gives
the same case. Anatomy is a set of ellipsoids and cylinders in normalised body coordinates
(u: patient right -1 .. left +1, v: anterior -1 .. posterior +1, w: feet 0 .. head 1) scaled to the
field of view; lesions are spheres sized in millimetres. The PET is the activity map blurred by a
Gaussian PSF with spatially correlated multiplicative noise (as after reconstruction with a
post-filter); the CT carries typical Hounsfield units. Reported numbers are *measured* on the
noisy SUV image, as a reader on a workstation would: SUVmax is the maximum over the lesion and the
slice is the axial image (counted from the head, 1-based) that holds that maximum. A few sentences
(``report_errors``, 8 % by default) misquote the SUVmax or the side, as real reports sometimes do.

Grid: array axes (i, j, k) run to the patient's left, posterior and head (axis codes L, P, S), the
autoPET/DICOM order. ``write_case`` writes the autoPET layout: SUV.nii.gz, CTres.nii.gz, SEG.nii.gz
(lesion k = label k), report.txt and truth.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import InputError
from .io import index_to_report_slice, save_volume
from .reports import compose_report

# (name, centre (u, v, w), semi-axes (u, v, w), HU, SUV range). Later entries overwrite earlier ones.
ORGANS = (
    ("lung_r", (-0.38, 0.0, 0.64), (0.27, 0.36, 0.11), -820, (0.5, 0.8)),
    ("lung_l", (0.38, 0.0, 0.64), (0.27, 0.36, 0.11), -820, (0.5, 0.8)),
    ("heart", (0.12, -0.12, 0.56), (0.2, 0.22, 0.05), 40, (2.0, 6.0)),
    ("liver", (-0.38, 0.0, 0.47), (0.38, 0.38, 0.075), 55, (1.8, 2.6)),
    ("spleen", (0.52, 0.22, 0.48), (0.16, 0.16, 0.045), 45, (1.6, 2.2)),
    ("kidney_r", (-0.32, 0.32, 0.39), (0.11, 0.11, 0.045), 30, (2.0, 3.0)),
    ("kidney_l", (0.32, 0.32, 0.39), (0.11, 0.11, 0.045), 30, (2.0, 3.0)),
    ("bladder", (0.0, -0.15, 0.2), (0.16, 0.16, 0.03), 5, (10.0, 40.0)),
    ("pelvis_r", (-0.5, 0.25, 0.28), (0.17, 0.15, 0.04), 300, (0.8, 1.2)),
    ("pelvis_l", (0.5, 0.25, 0.28), (0.17, 0.15, 0.04), 300, (0.8, 1.2)),
    ("skull", (0.0, -0.02, 0.925), (0.29, 0.41, 0.072), 800, (0.6, 0.9)),
    ("brain", (0.0, -0.02, 0.925), (0.25, 0.36, 0.06), 35, (7.0, 10.0)),
)
HOT = ("heart", "kidney_r", "kidney_l", "bladder", "brain")  # lesions keep clear of these
FAT_HU, MUSCLE_HU, BLOOD_HU, SPINE_HU = -90, 45, 40, 250
MIN_LESION_SUV, MAX_LESION_SUV = 2.5, 25.0  # reported lesions: SUVmax 2.5-25
FAT_SUV, SOFT_SUV, BLOOD_SUV, MARROW_SUV = 0.35, 0.7, 1.6, 1.0


@dataclass(frozen=True)
class Site:
    """Where a lesion may sit: its report phrase, canonical organ (as reports.py names it) and side."""

    phrase: str
    organ: str
    side: str | None
    region: str  # an ORGANS name (lesion inside it) or "node" (a point station, soft tissue)
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)  # for nodes
    max_diameter_mm: float = 40.0


def _sites() -> list[Site]:
    s = []
    for side, sgn in (("right", -1), ("left", 1)):
        s += [
            Site(f"{side} upper lobe nodule", "lung", side, f"lung_{side[0]}:upper"),
            Site(f"{side} lower lobe nodule", "lung", side, f"lung_{side[0]}:lower"),
            Site(f"{side} iliac bone lesion", "bone", side, f"pelvis_{side[0]}", max_diameter_mm=25),
            Site(
                f"{side} level II cervical node",
                "cervical node",
                side,
                "node",
                (sgn * 0.13, -0.05, 0.826),
                25,
            ),
            Site(f"{side} axillary node", "axillary node", side, "node", (sgn * 0.62, 0.05, 0.71), 30),
            Site(f"{side} hilar node", "hilar node", side, "node", (sgn * 0.1, 0.05, 0.67), 20),
            Site(f"{side} external iliac node", "iliac node", side, "node", (sgn * 0.26, -0.1, 0.25), 30),
            Site(f"{side} inguinal node", "inguinal node", side, "node", (sgn * 0.32, -0.3, 0.13), 30),
        ]
    s += [
        Site("hepatic segment {seg} lesion", "liver", None, "liver"),
        Site("splenic lesion", "spleen", None, "spleen", max_diameter_mm=25),
        Site("subcarinal node", "mediastinal node", None, "node", (-0.02, 0.02, 0.63), 25),
        Site("para-aortic node", "retroperitoneal node", None, "node", (-0.1, 0.12, 0.34), 30),
        Site("{vert} vertebral body lesion", "bone", None, "spine", max_diameter_mm=20),
    ]
    return s


SITES = _sites()


@dataclass
class Lesion:
    label: int
    site: Site
    phrase: str
    centre_vox: np.ndarray
    diameter_mm: float
    suv_target: float
    mask: np.ndarray | None = None  # bool, full grid
    suvmax: float = 0.0
    peak: tuple[int, int, int] = (0, 0, 0)
    slice: int = 0
    sentence: str = ""
    expect: str = "located"  # "ambiguous" by design, or "not_found" (a reporting error)
    stated_suvmax: float = 0.0  # what the report says (differs from suvmax after a reporting error)
    stated_side: str | None = None


@dataclass
class Case:
    suv: np.ndarray
    ct: np.ndarray
    seg: np.ndarray
    affine: np.ndarray
    report: str
    truth: dict
    lesions: list[Lesion] = field(default_factory=list)

    def pet_image(self) -> nib.Nifti1Image:
        return nib.Nifti1Image(self.suv, self.affine)


def phantom_affine(shape, spacing) -> np.ndarray:
    """Axis codes L, P, S (i to the left, j posterior, k to the head); world origin at the grid centre."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


class _Grid:
    def __init__(self, shape, spacing):
        self.shape, self.spacing = tuple(shape), np.asarray(spacing, float)
        nx, ny, nz = self.shape
        i, j, k = np.ogrid[:nx, :ny, :nz]
        self.u = ((i - (nx - 1) / 2) / (nx / 2)).astype(np.float32)
        self.v = ((j - (ny - 1) / 2) / (ny / 2)).astype(np.float32)
        self.w = (k / max(nz - 1, 1)).astype(np.float32)

    def ellipsoid(self, c, r):
        return ((self.u - c[0]) / r[0]) ** 2 + ((self.v - c[1]) / r[1]) ** 2 + (
            (self.w - c[2]) / r[2]
        ) ** 2 <= 1

    def cylinder(self, c, r, w0, w1):
        disc = ((self.u - c[0]) / r[0]) ** 2 + ((self.v - c[1]) / r[1]) ** 2 <= 1
        return disc & (self.w >= w0) & (self.w <= w1)

    def to_vox(self, uvw) -> np.ndarray:
        nx, ny, nz = self.shape
        return np.array([uvw[0] * nx / 2 + (nx - 1) / 2, uvw[1] * ny / 2 + (ny - 1) / 2, uvw[2] * (nz - 1)])

    def to_uvw(self, vox) -> np.ndarray:
        nx, ny, nz = self.shape
        return np.array(
            [(vox[0] - (nx - 1) / 2) / (nx / 2), (vox[1] - (ny - 1) / 2) / (ny / 2), vox[2] / (nz - 1)]
        )


def _anatomy(g: _Grid, rng) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """Activity (SUV before blur), CT (HU) and organ masks."""
    trunk = g.cylinder((0, 0), (0.78, 0.5), 0.15, 0.80)
    legs = g.cylinder((-0.32, 0), (0.26, 0.4), 0.0, 0.16) | g.cylinder((0.32, 0), (0.26, 0.4), 0.0, 0.16)
    neck = g.cylinder((0, 0), (0.22, 0.28), 0.79, 0.86)
    head = g.ellipsoid((0.0, -0.02, 0.925), (0.3, 0.42, 0.075))
    body = trunk | legs | neck | head
    inner = g.cylinder((0, 0), (0.7, 0.43), 0.15, 0.80) | g.cylinder((-0.32, 0), (0.22, 0.35), 0.0, 0.16)
    inner |= g.cylinder((0.32, 0), (0.22, 0.35), 0.0, 0.16) | neck | head
    act = np.zeros(g.shape, np.float32)
    ct = np.full(g.shape, -1000.0, np.float32)
    act[body], ct[body] = FAT_SUV, FAT_HU
    act[inner], ct[inner] = SOFT_SUV, MUSCLE_HU
    masks, levels = {"body": body}, {}
    aorta = g.cylinder((0.04, 0.14), (0.05, 0.05), 0.33, 0.66)
    act[aorta], ct[aorta] = BLOOD_SUV, BLOOD_HU
    spine = g.cylinder((0, 0.36), (0.08, 0.08), 0.2, 0.84)
    act[spine], ct[spine] = MARROW_SUV, SPINE_HU
    ct[spine & ~g.cylinder((0, 0.36), (0.055, 0.055), 0.2, 0.84)] = 800  # cortical rim
    masks["spine"] = spine
    for name, c, r, hu, (lo, hi) in ORGANS:
        m = g.ellipsoid(c, r)
        level = float(rng.uniform(lo, hi))
        act[m], ct[m] = level, hu
        masks[name], levels[name] = m, level
    for lung in ("lung_r", "lung_l"):  # organs painted later overwrote the lungs' edges
        masks[lung] &= ~(masks["heart"] | masks["liver"] | masks["spleen"])
    masks["skull"] &= ~masks["brain"]
    levels["spine"] = MARROW_SUV
    return act, ct, masks, levels


def _sphere_fraction(g: _Grid, centre, radius_mm, pad: int) -> tuple[tuple[slice, ...], np.ndarray]:
    """Partial-volume fraction of a sphere on a padded local box (3x3x3 sub-samples per voxel)."""
    rv = radius_mm / g.spacing
    lo = np.maximum(np.floor(centre - rv).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(centre + rv).astype(int) + pad + 1, g.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = (np.arange(3) - 1) / 3.0
    axes = [np.add.outer(np.arange(a, b), sub).ravel() for a, b in zip(lo, hi, strict=True)]
    d2 = sum(
        (((ax - c) * s) ** 2).reshape([-1 if n == d else 1 for n in range(3)])
        for d, (ax, c, s) in enumerate(zip(axes, centre, g.spacing, strict=True))
    )
    inside = (d2 <= radius_mm**2).astype(np.float32)
    shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
    frac = inside.reshape(shape[0], 3, shape[1], 3, shape[2], 3).mean(axis=(1, 3, 5))
    return box, frac


def _place(g: _Grid, site: Site, rng, radius_mm: float) -> np.ndarray | None:
    """A voxel-space centre for a lesion of this radius at this site, or None if it does not fit."""
    rv = radius_mm / g.spacing / np.array([g.shape[0] / 2, g.shape[1] / 2, g.shape[2] - 1])  # in uvw
    if site.region == "node":
        c = np.array(site.centre) + rng.uniform(-0.03, 0.03, 3) * np.array([1, 1, 0.3])
        return g.to_vox(c)
    name, _, part = site.region.partition(":")
    if name == "spine":
        c0, r0 = np.array([0.0, 0.36, 0.52]), np.array([0.055, 0.055, 0.3])
    else:
        _, c0, r0, _, _ = next(o for o in ORGANS if o[0] == name)
        c0, r0 = np.array(c0), np.array(r0)
    shrunk = r0 - rv
    if (shrunk <= 0).any():
        return None
    for _ in range(50):
        p = rng.uniform(-1, 1, 3)
        if (p**2).sum() > 1:
            continue
        if part == "upper":
            p[2] = abs(p[2])
        elif part == "lower":
            p[2] = -abs(p[2])
        return g.to_vox(c0 + p * shrunk)
    return None


def _hot_clear(masks, box, frac, margin_vox: int = 3) -> bool:
    """The lesion lies inside the body and keeps ``margin_vox`` voxels from every hot organ."""
    near = ndimage.binary_dilation(frac > 0, iterations=margin_vox)
    return not any(masks[h][box][near].any() for h in HOT) and masks["body"][box][frac > 0.5].all()


def _suv_target(rng, background: float) -> float:
    if background <= 1.0 and rng.random() < 0.3:  # low uptake: where grounding models fail (S1)
        return float(rng.uniform(2.5, 4.0))
    lo = max(2.5, 2.0 * background + 0.5)  # reported lesions stand out from their organ
    return float(np.exp(rng.uniform(np.log(lo), np.log(25.0))))


def _lesion_phrase(site: Site, rng, g: _Grid, centre) -> str:
    w = g.to_uvw(centre)[2]
    vert = (
        f"T{int(np.clip(12 - (w - 0.45) / 0.3 * 12, 1, 12))}"
        if w > 0.45
        else f"L{int(np.clip((0.45 - w) / 0.25 * 5 + 1, 1, 5))}"
    )
    return site.phrase.format(seg=int(rng.choice([2, 4, 5, 6, 7, 8])), vert=vert)


def make_case(
    seed: int = 0,
    index: int = 0,
    shape=(96, 96, 160),
    spacing=(4.0, 4.0, 4.0),
    n_lesions: tuple[int, int] = (1, 4),
    psf_fwhm_mm: float = 7.0,
    noise: float = 0.12,
    diameter_mm: tuple[float, float] = (8.0, 40.0),
    report_errors: float = 0.08,
) -> Case:
    """One synthetic case, drawn from ``default_rng([seed, index])``."""
    shape, spacing = tuple(int(s) for s in shape), tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 16:
        raise InputError(f"phantom shape must be 3 sizes >= 16, got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"phantom spacing must be 3 positive sizes in mm, got {spacing}")
    rng = np.random.default_rng([seed, index])
    g = _Grid(shape, spacing)
    act, ct, masks, levels = _anatomy(g, rng)
    sigma = psf_fwhm_mm / 2.3548 / np.asarray(spacing)

    lesions: list[Lesion] = []
    taken = np.zeros(shape, bool)
    want = int(rng.integers(n_lesions[0], n_lesions[1] + 1))
    for _ in range(60):
        if len(lesions) == want:
            break
        site = SITES[int(rng.integers(len(SITES)))]
        d = float(rng.uniform(diameter_mm[0], min(diameter_mm[1], site.max_diameter_mm)))
        centre = _place(g, site, rng, d / 2)
        if centre is None:
            continue
        box, frac = _sphere_fraction(g, centre, d / 2, pad=int(np.ceil(3 * sigma.max())) + 2)
        near = ndimage.binary_dilation(frac > 0, iterations=3)
        if taken[box][near].any() or not _hot_clear(masks, box, frac):
            continue
        bg_key = site.region.partition(":")[0]
        bg = levels.get(bg_key, SOFT_SUV)
        target = _suv_target(rng, bg)
        # Recovery after the PSF, so the blurred peak lands near the target SUVmax.
        rc = float(ndimage.gaussian_filter(frac, sigma).max())
        activity = bg + (target - bg) / max(rc, 0.05)
        act[box] = act[box] * (1 - frac) + activity * frac
        lesion_hu = 35.0 if bg_key != "liver" else 25.0
        ct[box] = ct[box] * (1 - frac) + lesion_hu * frac
        mask = np.zeros(shape, bool)
        mask[box] = frac >= 0.5
        if not mask.any():
            mask[tuple(np.round(centre).astype(int))] = True
        taken[box] |= frac > 0
        lesions.append(
            Lesion(len(lesions) + 1, site, _lesion_phrase(site, rng, g, centre), centre, d, target, mask)
        )

    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    field_ /= field_.std() + 1e-12
    for _ in range(4):  # noise can push a measured SUVmax out of 2.5-25: rescale that lesion, re-render
        suv = np.clip(ndimage.gaussian_filter(act, sigma) * (1 + noise * field_), 0, None).astype(np.float32)
        off = False
        for les in lesions:
            peak = float(suv[les.mask].max())
            if not MIN_LESION_SUV + 0.1 <= peak <= MAX_LESION_SUV - 0.1:
                act[les.mask] *= float(np.clip(peak, MIN_LESION_SUV + 0.3, MAX_LESION_SUV - 0.3)) / peak
                off = True
        if not off:
            break
    ct = ndimage.gaussian_filter(ct, 0.5) + rng.normal(0, 8, shape).astype(np.float32)
    ct[~masks["body"]] = -1000.0

    seg = np.zeros(shape, np.uint8)
    for les in lesions:
        seg[les.mask] = les.label
        idx = np.flatnonzero(les.mask)
        best = idx[np.argmax(suv.ravel()[idx])]
        les.peak = tuple(int(x) for x in np.unravel_index(best, shape))
        les.suvmax = float(suv.ravel()[best])
        les.slice = index_to_report_slice(les.peak[2], shape[2], head_increasing=True)
        les.stated_suvmax, les.stated_side = round(les.suvmax, 1), les.site.side

    report = compose_report(lesions, levels, rng, n_slices=shape[2], errors=report_errors)
    affine = phantom_affine(shape, spacing)
    truth = {
        "seed": seed,
        "index": index,
        "shape": list(shape),
        "spacing_mm": list(spacing),
        "axis_codes": "".join(nib.aff2axcodes(affine)),
        "slice_numbering": "axial images counted from the head, 1-based",
        "psf_fwhm_mm": psf_fwhm_mm,
        "noise": noise,
        "report_errors": report_errors,
        "organ_suv": {k: round(v, 3) for k, v in levels.items()},
        "lesions": [
            {
                "label": les.label,
                "sentence": les.sentence,
                "expect": les.expect,
                "suvmax": round(les.suvmax, 1),
                "suvmax_exact": round(les.suvmax, 4),
                "slice": les.slice,
                "side": les.site.side,
                "stated_suvmax": les.stated_suvmax,
                "stated_side": les.stated_side,
                "organ": les.site.organ,
                "site": les.phrase,
                "peak_voxel": list(les.peak),
                "centroid_voxel": [round(float(c), 2) for c in ndimage.center_of_mass(les.mask)],
                "diameter_mm": round(les.diameter_mm, 1),
                "volume_ml": round(float(les.mask.sum()) * float(np.prod(spacing)) / 1000, 3),
            }
            for les in lesions
        ],
    }
    return Case(
        suv=suv, ct=ct.astype(np.float32), seg=seg, affine=affine, report=report, truth=truth, lesions=lesions
    )


def write_case(case: Case, out: str | Path) -> Path:
    """autoPET layout: SUV.nii.gz, CTres.nii.gz, SEG.nii.gz, report.txt, truth.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    like = nib.Nifti1Image(case.suv, case.affine)
    save_volume(case.suv, like, out / "SUV.nii.gz", np.float32)
    save_volume(case.ct, like, out / "CTres.nii.gz", np.float32)
    save_volume(case.seg, like, out / "SEG.nii.gz", np.uint8)
    (out / "report.txt").write_text(case.report + "\n", encoding="utf-8")
    (out / "truth.json").write_text(json.dumps(case.truth, indent=2) + "\n", encoding="utf-8")
    return out


def write_phantoms(out: str | Path, n: int, seed: int = 0, **options) -> list[Path]:
    """``n`` cases as ``out/case_0000`` ... (see :func:`make_case` for the options)."""
    if n < 1:
        raise InputError(f"-n must be at least 1, got {n}")
    return [write_case(make_case(seed, i, **options), Path(out) / f"case_{i:04d}") for i in range(n)]
