"""PET/CT views for display: an axial image and a coronal MIP with CT, PET and a mask fused, in the
radiological convention (the patient's right on the image's left, the head at the top), whatever the
array order of the volume; the orientation comes from the affine, never assumed.

    from mmtok.grounding.viewer import views
    axial, coronal = views(suv, ct, mask, pet.affine, number=59)   # HxWx3 uint8 each

``number`` counts axial images as reports do: 1 is the top-most (head) image.
"""

from __future__ import annotations

import math

import numpy as np

from .io import axial_axis, lr_axis, report_slice_to_index

VIEW_WIDTH = 384  # px: views are enlarged by a whole factor to at least this width
CT_WINDOW = (-160, 240)  # HU: soft tissue, for the axial image
CT_MEAN_WINDOW = (-900, 100)  # HU: the coronal CT is a mean through air and tissue: a wider window
SUV_FULL = 10.0  # SUV at full PET colour
LEVEL_COLOUR = (80, 160, 255)  # the axial image's level: ticks at both edges of the coronal view


def window(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def fuse(ct2d, suv2d, mask2d, ct_window=CT_WINDOW) -> np.ndarray:
    """CT in grey, PET as a hot overlay (SUV 0-10), the mask in green: HxWx3 uint8."""
    grey = window(ct2d, *ct_window) if ct2d is not None else np.zeros(suv2d.shape, dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    hot = np.clip(suv2d / SUV_FULL, 0, 1)[..., None]
    rgb = rgb * (1 - 0.6 * hot) + 0.6 * hot * np.array([255.0, 80.0, 0.0])
    if mask2d is not None:
        m = mask2d[..., None].astype(np.float32)
        rgb = rgb * (1 - 0.5 * m) + 0.5 * m * np.array([0.0, 255.0, 0.0])
    return rgb.clip(0, 255).astype(np.uint8)


def orient(plane: np.ndarray, rows_axis: int, cols_axis: int, rows_flip: bool, cols_flip: bool) -> np.ndarray:
    """A 2D plane whose two remaining array axes are ``rows_axis`` < or > ``cols_axis`` -> rows x cols."""
    img = plane if rows_axis < cols_axis else plane.swapaxes(0, 1)
    img = img[::-1] if rows_flip else img
    return np.ascontiguousarray(img[:, ::-1] if cols_flip else img)


def zoom(img: np.ndarray | None, width: int = VIEW_WIDTH) -> np.ndarray | None:
    """Nearest-neighbour enlargement by a whole factor: a 4 mm phantom is ~96 voxels wide, too small to
    read on a screen, and smoothing would blur the mask's edge."""
    if img is None:
        return None
    k = max(1, math.ceil(width / img.shape[1]))
    return np.kron(img, np.ones((k, k, 1), dtype=img.dtype))


def views(suv, ct, mask, affine, number: int, width: int = VIEW_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(axial image ``number``, coronal MIP) of SUV, CT (or None) and a mask (or None) on one grid."""
    hf, head_up = axial_axis(affine)
    lr, left_up = lr_axis(affine)
    ap = 3 - hf - lr
    n = suv.shape[hf]
    number = int(np.clip(int(number or 1), 1, n))
    i = report_slice_to_index(number, n, head_up)
    take = lambda a: None if a is None else np.take(a, i, axis=hf)  # noqa: E731
    axial = fuse(take(ct), take(suv), take(mask))  # axes (lr, ap) in array order
    rest = sorted((lr, ap))
    axial = orient(axial, rest.index(ap), rest.index(lr), False, not left_up)
    proj = lambda a, f: None if a is None else f(a, axis=ap)  # noqa: E731
    coronal = fuse(proj(ct, np.mean), proj(suv, np.max), proj(mask, np.max), ct_window=CT_MEAN_WINDOW)
    rest = sorted((lr, hf))
    coronal = orient(coronal, rest.index(hf), rest.index(lr), head_up, not left_up)
    tick = max(2, coronal.shape[1] // 16)  # at the edges only: a line across would hide that row
    coronal[number - 1, :tick] = coronal[number - 1, -tick:] = LEVEL_COLOUR  # row 0: the head, image 1
    return zoom(axial, width), zoom(coronal, width)
