"""Builders for the PET/CT tests: small DICOM PET series (pydicom) and small phantom sizes.

A uniquely named module (not conftest) so that test files can import it unambiguously.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

WEIGHT_KG, DOSE_BQ, HALF_LIFE_S = 80.0, 370e6, 6586.2
DELTA_T_S = 3600.0  # injection 09:00:00, series start 10:00:00


def write_pet_series(
    folder: Path,
    stored: np.ndarray,
    slopes=None,
    spacing=(2.0, 2.5),
    slice_step=3.0,
    header: dict | None = None,
    per_slice: dict | None = None,
    radiopharm: dict | None = None,
    shuffle: bool = True,
) -> Path:
    """One PET series as files; ``stored`` is uint16 [slices, rows, cols]; ``header`` sets (or, with
    None, deletes) top-level keywords; ``per_slice`` maps slice index -> {keyword: value}."""
    folder.mkdir(parents=True, exist_ok=True)
    n = stored.shape[0]
    slopes = np.full(n, 0.5) if slopes is None else np.asarray(slopes, float)
    series_uid = generate_uid()
    order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    for file_no, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PositronEmissionTomographyImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "PT"
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = int(k) + 1
        ds.PatientWeight = WEIGHT_KG
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["ATTN", "DECY", "NORM"]
        ds.SeriesDate, ds.SeriesTime = "20240101", "100000"
        ds.AcquisitionDate, ds.AcquisitionTime = "20240101", "100000"
        rp = Dataset()
        rp.RadionuclideTotalDose = DOSE_BQ
        rp.RadionuclideHalfLife = HALF_LIFE_S
        rp.RadiopharmaceuticalStartDateTime = "20240101090000"
        rp.RadiopharmaceuticalStartTime = "090000"
        for key, value in (radiopharm or {}).items():
            if value is None:
                delattr(rp, key) if hasattr(rp, key) else None
            else:
                setattr(rp, key, value)
        ds.RadiopharmaceuticalInformationSequence = [rp]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -20.0, 100.0 + k * slice_step]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = slice_step
        ds.RescaleSlope, ds.RescaleIntercept = float(slopes[k]), 0.0
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = stored[k].astype(np.uint16).tobytes()
        for key, value in {**(header or {}), **((per_slice or {}).get(int(k), {}))}.items():
            if value is None:
                if hasattr(ds, key):
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(str(folder / f"IM{file_no:04d}.dcm"), enforce_file_format=True)
    return folder


def expected_suv(bqml: np.ndarray, delta_t: float = DELTA_T_S) -> np.ndarray:
    return bqml * WEIGHT_KG * 1000 / (DOSE_BQ * 2 ** (-delta_t / HALF_LIFE_S))


SMALL = {"shape": (48, 48, 64), "diameter_mm": (8.0, 20.0)}
