"""The grounding pipeline behind ``mmtok ground``: PET + CT + one sentence -> one lesion mask.

    PET (SUV NIfTI or DICOM PET folder) + CT (NIfTI) -> CT resampled onto the PET grid if needed
    -> reoriented to the model's axes (L, P, S) and resampled to its voxel size if needed
    -> SUV/CT scaled -> model.probabilities (sliding window, Gaussian blending; the sentence's
       numbers are stripped inside the model) -> back to the PET grid
    -> post-processing (component with the highest mean probability, SUV < 1 zeroed)
    -> mask on the input PET grid (uint8 NIfTI) + a JSON summary (+ an optional overlay PNG)

Orientation matters: the sentence says "left" or "right", so the image must be in the orientation
the model was trained in; it is read from the affine, never assumed, and undone on the way out.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from ..errors import InputError
from ..hub import load
from .io import CT_FILL_HU, load_ct, load_pet, resample_to_pet, same_grid, save_mask, voxel_volume_ml
from .phantom import SITES
from .reports import find_organ, strip_numbers

DEFAULT_MODEL = "contextual3d-phantom"
# Below this peak probability a mask is reported as no match: the mask threshold is 0.5, and a peak
# barely above it is a coin flip, not a finding the sentence picked out.
MIN_CONFIDENCE = 0.6
MODEL_AXES = ("L", "P", "S")  # the phantom grid the shipped models were trained on
MAX_TEXT_CHARS = 1000


@dataclass
class GroundResult:
    mask: np.ndarray  # bool, on the input PET grid (array order of the PET file)
    probability: np.ndarray  # float32, same grid
    pet: nib.Nifti1Image
    info: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _model(name: str, device: str):
    from . import model as _registers_classes  # noqa: F401  (registers the grounding nets; MONAI, on use)

    net = load(name, device=device)
    if getattr(net, "task", None) != "grounding":
        raise InputError(f"model {name!r} is a {type(net).__name__}, not a grounding model")
    return net


def check_text(text) -> str:
    """The sentence, or ``InputError`` if it is empty, not UTF-8 or longer than one sentence can be."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("--text is empty: give the report sentence that describes the lesion")
    try:  # undecodable bytes arrive as lone surrogates, which the text encoder's tokenizer rejects
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("--text is not valid UTF-8 text") from None
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"--text is {len(text)} characters; give one sentence (at most {MAX_TEXT_CHARS})")
    return text


def load_inputs(pet, ct) -> tuple[nib.Nifti1Image, nib.Nifti1Image, list[str]]:
    """(PET in SUV, CT on the PET grid, notes). DICOM folders: PET is converted to SUVbw, CT to HU."""
    notes: list[str] = []
    pet_img = pet if isinstance(pet, nib.Nifti1Image) else load_pet(pet)[0]
    if ct is None:
        raise InputError("--ct is required: the grounding model reads SUV and CT")
    if not isinstance(ct, nib.Nifti1Image):
        ct = load_ct(ct)  # a NIfTI file or a DICOM CT series folder
    if not same_grid(pet_img, ct):
        ct = resample_to_pet(ct, pet_img)
        notes.append("CT resampled onto the PET grid")
    suv = np.asarray(pet_img.dataobj, np.float32)
    if float(suv.max()) < 1.0:
        raise InputError(
            f"PET maximum is {float(suv.max()):.3g}: expected SUV units (convert with `mmtok suv`)"
        )
    if min(suv.shape) < 8:
        raise InputError(f"PET volume {suv.shape} is too small (need at least 8 voxels per axis)")
    return pet_img, ct, notes


def _to_model_grid(img: nib.Nifti1Image, spacing: float, cval: float) -> tuple[nib.Nifti1Image, bool]:
    """``img`` (already in model axes) on an isotropic ``spacing`` grid; (image, resampled?)."""
    zooms = np.asarray(img.header.get_zooms()[:3], float)
    if np.allclose(zooms, spacing, rtol=0.02):
        return img, False
    shape = np.maximum(np.round(np.asarray(img.shape[:3]) * zooms / spacing).astype(int), 1)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / zooms * spacing
    # Keep the centre of the field of view where it was.
    centre = img.affine[:3, :3] @ ((np.asarray(img.shape[:3]) - 1) / 2) + img.affine[:3, 3]
    affine[:3, 3] = centre - affine[:3, :3] @ ((shape - 1) / 2)
    out = nibabel.processing.resample_from_to(
        img, (tuple(shape), affine), order=1, mode="constant", cval=cval
    )
    return nib.Nifti1Image(np.asarray(out.dataobj, np.float32), affine), True


def ground(
    pet,
    ct,
    text: str,
    model: str = DEFAULT_MODEL,
    device: str = "cpu",
    overlap: float = 0.5,
    threshold: float = 0.5,
    progress: bool = False,
) -> GroundResult:
    """Segment the lesion ``text`` describes. ``pet``/``ct``: paths (PET may be a DICOM folder) or images."""
    start = time.perf_counter()
    check_text(text)
    if not 0.0 <= overlap < 1.0 or not 0.0 < threshold < 1.0:
        raise InputError("overlap must be in [0, 1) and threshold in (0, 1)")
    pet_img, ct_img, notes = load_inputs(pet, ct)
    net = _model(str(model), str(device))

    # Into the model's axes (and voxel size), from the affine.
    src = io_orientation(pet_img.affine)
    to_model = ornt_transform(src, axcodes2ornt(MODEL_AXES))
    pet_m, ct_m = pet_img.as_reoriented(to_model), ct_img.as_reoriented(to_model)
    pet_g, resampled = _to_model_grid(pet_m, net.spacing_mm, 0.0)
    ct_g, _ = _to_model_grid(ct_m, net.spacing_mm, CT_FILL_HU)
    if resampled:
        notes.append(f"resampled to {net.spacing_mm:g} mm for the model")

    from .model import normalise, postprocess

    image = normalise(np.asarray(pet_g.dataobj), np.asarray(ct_g.dataobj))
    prob = (
        net.probabilities(image, [text], overlap=overlap, progress=progress)[0]
        .cpu()
        .numpy()
        .astype(np.float32)
    )
    if resampled:  # probabilities back onto the (reoriented) PET grid
        prob_img = nibabel.processing.resample_from_to(nib.Nifti1Image(prob, pet_g.affine), pet_m, order=1)
        prob = np.asarray(prob_img.dataobj, np.float32)
    suv_m = np.asarray(pet_m.dataobj, np.float32)
    mask_m = postprocess(prob, suv_m, threshold)

    back = ornt_transform(axcodes2ornt(MODEL_AXES), src)  # undo the reorientation
    mask = nib.orientations.apply_orientation(mask_m, back).astype(bool)
    prob = nib.orientations.apply_orientation(prob, back).astype(np.float32)
    suv = np.asarray(pet_img.dataobj, np.float32)

    place, places = find_organ(text), known_places(net)
    info = {
        "text": text,
        "model_text": strip_numbers(text) if net.uses_text else None,
        "model": str(model),
        "voxels": int(mask.sum()),
        "volume_ml": round(float(mask.sum()) * voxel_volume_ml(pet_img), 3),
        "peak_suv": None,
        "peak_voxel": None,
        "centroid_voxel": None,
        # The place the sentence names (reports.find_organ), whether the model was trained on it, and
        # the peak foreground probability inside the mask: the UI says "no lesion matches" when the
        # place is unknown or the peak is under MIN_CONFIDENCE.
        "place": place,
        "known_place": place in places,
        "known_places": sorted(places),
        "confidence": round(float(prob[mask].max()), 4) if mask.any() else 0.0,
        "notes": notes,
    }
    if mask.any():
        idx = np.flatnonzero(mask)
        best = idx[np.argmax(suv.ravel()[idx])]
        info["peak_suv"] = round(float(suv.ravel()[best]), 3)
        info["peak_voxel"] = [int(v) for v in np.unravel_index(best, mask.shape)]
        info["centroid_voxel"] = [round(float(c), 2) for c in ndimage.center_of_mass(mask)]
    else:
        notes.append("no lesion found for this sentence (empty mask)")
    info["seconds"] = round(time.perf_counter() - start, 3)
    return GroundResult(mask=mask, probability=prob, pet=pet_img, info=info)


def sentence_place(
    text: str, model: str = DEFAULT_MODEL, device: str = "cpu"
) -> tuple[str | None, list[str]]:
    """(the place ``text`` names, the places ``model`` knows), without running the model: a sentence
    naming none of them can be answered at once."""
    return find_organ(text or ""), sorted(known_places(_model(str(model), str(device))))


def known_places(net) -> set[str]:
    """The organs and node stations a grounding model's training sentences named: the phantom sites
    (every shipped grounding model trains on phantoms; ``net.places`` overrides)."""
    places = getattr(net, "places", None)
    if places:
        return set(places)

    return {s.organ for s in SITES}


def save_overlay(suv: np.ndarray, mask: np.ndarray, affine: np.ndarray, path, title: str = "") -> Path:
    """Coronal SUV maximum-intensity projection with the mask outlined (head up, patient left on the
    viewer's right: the radiological convention)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S")))
    s = nib.orientations.apply_orientation(np.asarray(suv, np.float32), tr)
    m = nib.orientations.apply_orientation(np.asarray(mask, np.uint8), tr)
    mip, mmip = s.max(axis=1).T[::-1], m.max(axis=1).T[::-1]  # [Z (head at top), X]
    fig, ax = plt.subplots(figsize=(3.2, 5.2), dpi=110)
    ax.imshow(mip, cmap="gray_r", vmin=0, vmax=8, aspect="equal", interpolation="nearest")
    if mmip.any():
        ax.contour(mmip, levels=[0.5], colors="red", linewidths=1.2)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7, wrap=True)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_ground(pet, ct, text, out, model=DEFAULT_MODEL, device="cpu", overlay=None, overlap=0.5) -> dict:
    """``mmtok ground``: write the mask NIfTI (and overlay PNG); return the JSON summary."""
    if out is None or not str(out).endswith((".nii", ".nii.gz")):
        raise InputError(f"--out must be a NIfTI path ending in .nii.gz or .nii, got {out!r}")
    result = ground(pet, ct, text, model=model, device=device, overlap=overlap)
    info = dict(result.info, out=str(save_mask(result.mask, result.pet, out)))
    if overlay:
        suv = np.asarray(result.pet.dataobj, np.float32)
        info["overlay"] = str(save_overlay(suv, result.mask, result.pet.affine, overlay, title=text))
    return info
