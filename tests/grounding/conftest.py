"""Fixtures for the PET/CT tests (builders live in petct_helpers.py)."""

import numpy as np
import pytest
from petct_helpers import write_pet_series


@pytest.fixture
def pet_series(tmp_path):
    """(folder, stored counts [slices, rows, cols], slopes) of a valid 5-slice 6x7 series."""
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 30000, size=(5, 6, 7)).astype(np.uint16)
    slopes = np.array([0.5, 0.25, 1.0, 0.75, 0.5])  # per-slice slopes vary, as on GE
    return write_pet_series(tmp_path / "pet", stored, slopes), stored, slopes
