"""Weak labels from report text: findings -> lesion masks on the SUV volume.

For each finding (see ``reports.py``) with a current SUVmax S and an axial slice number:

1. **Locate.** Candidates are local maxima of the SUV (3x3x3) whose value is within ``suv_tol`` of S
   (0.1 by default, the paper's match criterion) near the stated slice. Each candidate is segmented
   (step 2); it matches if its region spans the stated slice (``slice_tol`` slices either way, 0 by
   default), the candidate is the maximum of its own region (not a shoulder of a hotter structure),
   the region is focal (not larger than ``max_volume_ml``, not a long low-uptake structure:
   physiological-uptake rejection) and, when the report states a side, the region is not on the
   other side of the body midline (``midline_buffer_mm`` tolerance).
2. **Segment.** Iterative thresholding with local background (Jentzen type):
   ``T/S = 0.078 / V[mL] + 0.617 B / S + 0.316``, B the mean SUV on the outer shell of a 3-voxel
   dilation of the current region, iterated until T moves by < 1 %; lesions whose fraction exceeds 0.9
   are dropped. ``method="fixed"`` thresholds at ``fraction`` x S instead.
3. **Decide.** One match -> "located" with a confidence in [0, 1]; several -> "ambiguous" (never
   guessed); none -> "not_found" with the reason the nearest candidate failed.

Voxel indices are in the input PET array's order; slice numbers count axial images from the head,
1-based, unless ``slice_origin``/``slice_base`` say otherwise (the direction comes from the affine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import InputError
from .io import axial_axis, check_same_grid, load_pet, load_volume, lr_axis, report_slice_to_index, save_mask
from .reports import MIN_SUV, Finding, parse_report

HIGH_CONFIDENCE = 0.8
_SIX = ndimage.generate_binary_structure(3, 1)


@dataclass
class WeakLabelConfig:
    slice_origin: str = "head"
    slice_base: int = 1
    suv_tol: float = 0.1
    slice_tol: int = 0
    method: str = "itm"  # or "fixed"
    fraction: float = 0.5  # for method="fixed": threshold = fraction x SUVmax
    min_suv: float = MIN_SUV
    midline_buffer_mm: float = 20.0
    max_volume_ml: float = 150.0
    max_radius_mm: float = 60.0  # segmentation box half-size: lesions are <= ~40 mm across
    physio_extent_mm: float = 150.0  # a region this long with SUVmax < physio_suv is physiological
    physio_suv: float = 5.0
    # The small-volume term 0.078/V is evaluated at V >= this: without a floor, a region of a few
    # 4 mm voxels raises its own threshold, shrinks, and runs away to the single peak voxel.
    itm_min_volume_ml: float = 0.5

    def __post_init__(self):
        if self.slice_origin not in ("head", "foot"):
            raise InputError(f"--slice-origin must be head or foot, got {self.slice_origin!r}")
        if self.slice_base not in (0, 1):
            raise InputError(f"--slice-base must be 0 or 1, got {self.slice_base!r}")
        if self.method not in ("itm", "fixed"):
            raise InputError(f"--method must be itm or fixed, got {self.method!r}")
        if not 0 < self.fraction < 1:
            raise InputError(f"--fraction must lie in (0, 1), got {self.fraction}")
        if self.suv_tol < 0 or self.slice_tol < 0:
            raise InputError("--suv-tol and --slice-tol must not be negative")


@dataclass
class Region:
    mask: np.ndarray  # bool, on the segmentation box
    box: tuple[slice, ...]
    threshold: float
    background: float
    fraction: float
    converged: bool
    leaks: bool  # the region reaches the box faces: not a focal lesion

    def full(self, shape) -> np.ndarray:
        out = np.zeros(shape, bool)
        out[self.box] = self.mask
        return out


def segment(suv: np.ndarray, seed, spacing, config: WeakLabelConfig) -> Region:
    """Region around ``seed`` (a voxel index) by iterative (or fixed-fraction) thresholding."""
    radius = np.ceil(config.max_radius_mm / np.asarray(spacing)).astype(int)
    lo = np.maximum(np.asarray(seed) - radius, 0)
    hi = np.minimum(np.asarray(seed) + radius + 1, suv.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub = suv[box]
    local = tuple(int(s - a) for s, a in zip(seed, lo, strict=True))
    peak = float(sub[local])
    voxel_ml = float(np.prod(spacing)) / 1000.0

    def grow(threshold: float) -> np.ndarray:
        labels, _ = ndimage.label(sub >= threshold, structure=_SIX)
        return labels == labels[local]

    threshold = (config.fraction if config.method == "fixed" else 0.5) * peak
    region, background, fraction, converged = grow(threshold), 0.0, threshold / peak, config.method == "fixed"
    if config.method == "itm":
        for _ in range(30):
            outer = ndimage.binary_dilation(region, _SIX, iterations=3)
            shell = outer & ~ndimage.binary_dilation(region, _SIX, iterations=2)
            background = float(sub[shell].mean()) if shell.any() else 0.0
            volume = max(region.sum() * voxel_ml, config.itm_min_volume_ml)
            fraction = 0.078 / volume + 0.617 * background / peak + 0.316
            new = min(fraction, 1.0) * peak
            done = abs(new - threshold) < 0.01 * threshold
            threshold, region = new, grow(new)
            if done:
                converged = True
                break
    # A region touching a face of its box (other than the volume's own edge) is not focal.
    at_volume_edge = [(a == 0, b == n) for a, b, n in zip(lo, hi, suv.shape, strict=True)]
    leaks = False
    for ax, (lo_edge, hi_edge) in enumerate(at_volume_edge):
        face = np.moveaxis(region, ax, 0)
        leaks |= (not lo_edge and face[0].any()) or (not hi_edge and face[-1].any())
    return Region(region, box, threshold, background, fraction, converged, bool(leaks))


class WeakLabeler:
    """Locate and segment report findings on one SUV volume (``suv`` in the PET array order)."""

    def __init__(self, pet: nib.Nifti1Image, ct: nib.Nifti1Image | None = None, config=None):
        self.config = config or WeakLabelConfig()
        self.pet = pet
        self.suv = np.asarray(pet.dataobj, dtype=np.float32)
        if ct is not None:
            check_same_grid(pet, ct, "CT")
        self.spacing = np.sqrt((pet.affine[:3, :3] ** 2).sum(axis=0))
        self.axial, self.head_up = axial_axis(pet.affine)
        self.lr, self.left_up = lr_axis(pet.affine)
        body = np.asarray(ct.dataobj) > -500 if ct is not None else self.suv > 0.2
        coords = np.nonzero(body.any(axis=tuple(a for a in range(3) if a != self.lr)))[0]
        if coords.size == 0:
            raise InputError("the PET holds no body (no voxel above SUV 0.2); is it in SUV units?")
        weights = body.sum(axis=tuple(a for a in range(3) if a != self.lr))
        self.midline = float((np.arange(body.shape[self.lr]) * weights).sum() / weights.sum())
        c = self.config
        peaks = (self.suv == ndimage.maximum_filter(self.suv, size=3, mode="nearest")) & (
            self.suv >= c.min_suv - c.suv_tol
        )
        self.peak_idx = np.argwhere(peaks)
        self.peak_val = self.suv[peaks]

    # -------------------------------------------------------------- helpers

    def side_of(self, index) -> str:
        offset_mm = (index[self.lr] - self.midline) * self.spacing[self.lr]
        if abs(offset_mm) <= self.config.midline_buffer_mm:
            return "midline"
        return "left" if (offset_mm > 0) == self.left_up else "right"

    def _check(self, f: Finding, target: int, idx, region: Region) -> str:
        """'' if the candidate matches the finding, else why not."""
        c = self.config
        full_axial = np.nonzero(region.mask.any(axis=tuple(a for a in range(3) if a != self.axial)))[0]
        k0 = full_axial.min() + region.box[self.axial].start
        k1 = full_axial.max() + region.box[self.axial].start
        if not k0 - c.slice_tol <= target <= k1 + c.slice_tol:
            return "its region does not reach the stated slice"
        if self.suv[region.box][region.mask].max() > self.suv[tuple(idx)] + 1e-6:
            return "it is a shoulder of a hotter structure"
        volume = region.mask.sum() * float(np.prod(self.spacing)) / 1000
        extent_mm = (k1 - k0 + 1) * self.spacing[self.axial]
        if region.leaks or volume > c.max_volume_ml:
            return f"its region is not focal ({volume:.0f} mL): physiological uptake"
        if extent_mm > c.physio_extent_mm and f.suvmax < c.physio_suv:
            return f"its region spans {extent_mm:.0f} mm with SUVmax < {c.physio_suv}: physiological uptake"
        if c.method == "itm" and region.fraction > 0.9:
            return f"uptake too close to background (threshold fraction {region.fraction:.2f} > 0.9)"
        side = self.side_of(idx)
        if f.side in ("left", "right") and side not in (f.side, "midline"):
            return f"it lies on the {side}, the report says {f.side}"
        return ""

    # -------------------------------------------------------------- main

    def label(self, f: Finding) -> dict:
        c = self.config
        out = {
            "sentence": f.sentence,
            "text": f.text,
            "suvmax": f.suvmax,
            "slice": f.slice,
            "side": f.side,
            "organ": f.organ,
            "status": {"ok": "not_found"}.get(f.status, f.status),
            "reason": f.reason,
            "confidence": 0.0,
            "peak_voxel": None,
            "peak_suv": None,
            "centroid_voxel": None,
            "volume_ml": None,
            "mask": None,
        }
        if f.status != "ok":
            return out
        n_axial = self.suv.shape[self.axial]
        try:
            target = report_slice_to_index(f.slice, n_axial, self.head_up, c.slice_origin, c.slice_base)
        except InputError as e:
            out["status"], out["reason"] = "skipped", str(e)
            return out
        window = int(np.ceil(30.0 / self.spacing[self.axial])) + c.slice_tol
        near = (np.abs(self.peak_val - f.suvmax) <= c.suv_tol + 1e-6) & (
            np.abs(self.peak_idx[:, self.axial] - target) <= window
        )
        candidates = sorted(
            self.peak_idx[near].tolist(), key=lambda p: (abs(p[self.axial] - target), -self.suv[tuple(p)])
        )
        matches, reasons = [], []
        for idx in candidates:
            region = segment(self.suv, idx, self.spacing, c)
            why = self._check(f, target, idx, region)
            if why:
                reasons.append(why)
            else:
                matches.append((idx, region))
        if not matches:
            out["reason"] = f"no focal uptake with SUVmax {f.suvmax}±{c.suv_tol} spans slice {f.slice}" + (
                f" (nearest candidate: {reasons[0]})" if reasons else ""
            )
            return out
        if len(matches) > 1:
            where = ", ".join(str(list(m[0])) for m in matches[:4])
            out["status"], out["reason"] = "ambiguous", f"{len(matches)} lesions match (peaks at {where})"
            return out
        idx, region = matches[0]
        mask = region.full(self.suv.shape)
        confidence, notes = self._confidence(f, idx, region, target)
        out.update(
            status="located",
            reason="; ".join(notes),
            confidence=round(confidence, 3),
            peak_voxel=[int(v) for v in idx],
            peak_suv=round(float(self.suv[tuple(idx)]), 3),
            centroid_voxel=[round(float(v), 2) for v in ndimage.center_of_mass(mask)],
            volume_ml=round(float(mask.sum() * np.prod(self.spacing) / 1000), 3),
        )
        out["_mask"] = mask
        return out

    def _confidence(self, f: Finding, idx, region: Region, target: int) -> tuple[float, list[str]]:
        """1.0 for a clean match; each doubt multiplies it down (below 0.8 = not high confidence)."""
        c, conf, notes = self.config, 1.0, []
        # Near misses: other local maxima within twice the tolerance near the slice (and on the stated
        # side) could have matched with one rounding step more, so the match may be luck.
        near = (np.abs(self.peak_val - f.suvmax) <= 2 * c.suv_tol + 1e-6) & (
            np.abs(self.peak_idx[:, self.axial] - target) <= 2
        )
        stated = f.side if f.side in ("left", "right") else None
        others = sum(
            1
            for p in self.peak_idx[near]
            if tuple(p) != tuple(idx) and (stated is None or self.side_of(p) in (stated, "midline"))
        )
        if others > 0:
            conf *= 0.7
            notes.append(f"{others} other peak(s) within ±{2 * c.suv_tol:.1f} SUV near the slice")
        if idx[self.axial] != target:
            conf *= 0.9
            notes.append(f"peak {abs(idx[self.axial] - target)} slice(s) from the stated one")
        if not region.converged:
            conf *= 0.7
            notes.append("thresholding did not converge")
        if f.side in ("left", "right") and self.side_of(idx) == "midline":
            conf *= 0.9
            notes.append("close to the midline: side not checked")
        if region.background > 0 and f.suvmax / region.background < 1.5:
            conf *= 0.7
            notes.append(f"low contrast (SUVmax/background {f.suvmax / region.background:.1f})")
        return conf, notes


def weak_label(findings: list[Finding], pet, ct=None, config: WeakLabelConfig | None = None) -> list[dict]:
    """Results per finding (the JSON fields; located ones also carry the bool mask under ``_mask``)."""
    labeler = WeakLabeler(pet, ct, config)
    return [labeler.label(f) for f in findings]


def run_weaklabel(report, pet, out, ct=None, config: WeakLabelConfig | None = None) -> dict:
    """The ``mmtok weaklabel`` pipeline: files in, one mask NIfTI per located finding + findings.json out."""
    report = Path(report)
    if not report.is_file():
        raise InputError(f"report file not found: {report}")
    try:
        text = report.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"report {report} is not UTF-8 text") from None
    findings = parse_report(text, (config or WeakLabelConfig()).min_suv)
    if not findings:
        raise InputError(f"report {report} has no findings (no sentence with both an SUV and a slice number)")
    pet_img, suv_info = load_pet(pet)
    ct_img = load_volume(ct, "CT") if ct is not None else None
    results = weak_label(findings, pet_img, ct_img, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for n, r in enumerate(results, 1):
        mask = r.pop("_mask", None)
        if mask is not None:
            r["mask"] = str(save_mask(mask, pet_img, out / f"finding_{n:02d}.nii.gz"))
    summary = {"findings": results}
    if suv_info is not None:
        summary["suv"] = {k: v for k, v in vars(suv_info).items()}
    (out / "findings.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
