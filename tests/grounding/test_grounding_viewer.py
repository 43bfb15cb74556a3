"""The PET/CT views: radiological orientation from the affine, report image numbering, enlargement."""

import numpy as np
import pytest

from mmtok.grounding.viewer import VIEW_WIDTH, views


def _volume(affine_diag):
    """A 24x20x30 SUV volume with one hot voxel at the patient's right, top-most axial image."""
    suv = np.zeros((24, 20, 30), np.float32)
    affine = np.diag([*affine_diag, 1.0])
    # nibabel's RAS+: a positive affine[0, 0] means axis 0 runs towards the patient's Right.
    right = 21 if affine_diag[0] > 0 else 2
    top = 29 if affine_diag[2] > 0 else 0  # +z is the head in RAS
    suv[right, 10, top] = 10.0
    return suv, affine


@pytest.mark.parametrize("diag", [(4.0, 4.0, 4.0), (-4.0, -4.0, 4.0), (4.0, 4.0, -4.0)])
def test_the_patients_right_is_on_the_images_left_and_the_head_on_top(diag):
    suv, affine = _volume(diag)
    axial, coronal = views(suv, None, None, affine, number=1)  # image 1: the top-most
    assert axial.shape[1] >= VIEW_WIDTH and coronal.shape[1] >= VIEW_WIDTH
    k = axial.shape[1] // 24
    hot = lambda img: np.argwhere(img[..., 0].astype(int) - img[..., 1].astype(int) > 60)  # noqa: E731
    cols = hot(axial)[:, 1] // k
    assert len(cols) and cols.max() < 12  # the image's left half
    rows = hot(coronal)[:, 0] // k
    assert len(rows) and rows.min() == 0  # the top row
    # Any other image number does not hold the hot voxel.
    axial2, _ = views(suv, None, None, affine, number=5)
    assert not len(hot(axial2))


def test_mask_is_green_and_numbers_are_clipped():
    suv, affine = _volume((4.0, 4.0, 4.0))
    mask = np.zeros(suv.shape, bool)
    mask[5:8, 5:8, 15] = True
    axial, coronal = views(suv, None, mask, affine, number=15)  # image 15 from the top = index 15
    assert (axial[..., 1] > axial[..., 0] + 60).any()
    top, _ = views(suv, None, None, affine, number=-3)  # clipped to image 1
    assert top.shape == axial.shape
