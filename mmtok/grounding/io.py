"""PET/CT input and output: NIfTI volumes, CT on the PET grid (CTres), DICOM PET -> SUVbw.

Array order is whatever the file holds; every anatomical direction (which axis runs head-foot,
which way is patient left) is read from the affine with ``nibabel.aff2axcodes``, never assumed.
Volumes are checked before any work: 3D, finite, non-singular affine, matching grids.

DICOM PET is converted to body-weight SUV by the QIBA vendor-neutral procedure (see
``docs/petct.md``). Every missing or contradictory tag raises one ``InputError`` line naming the tag:
there are no silent defaults (no 75 kg, no assumed dose or uptake time).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

CT_FILL_HU = -1024.0  # value outside the CT field of view after resampling (autoPET's CTres)
MAX_VOXELS = 600_000_000  # 2.4 GB as float32: far above a whole-body CT (512 x 512 x 1000 = 2.6e8)


# ----------------------------------------------------------------------------- NIfTI


def load_volume(path: str | Path, what: str = "volume") -> nib.Nifti1Image:
    """Load a 3D NIfTI (a trailing singleton 4th axis is dropped) and validate it; float32 data."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        img = nib.load(str(path))
        # The header declares the size: refuse absurd ones before a byte of data is allocated.
        voxels = int(np.prod([int(d) for d in img.shape], dtype=np.float64))
        if voxels > MAX_VOXELS:
            raise InputError(
                f"{what} {path} declares {'x'.join(map(str, img.shape))} = {voxels:.3g} voxels, "
                f"over the {MAX_VOXELS:.0e} limit"
            )
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except InputError:
        raise
    except Exception as e:  # nibabel raises several types for non-NIfTI or truncated files
        raise InputError(f"{what} {path} is not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{what} {path} must be a 3D volume, got shape {tuple(data.shape)}")
    if min(data.shape) < 2:
        raise InputError(f"{what} {path} must be a 3D volume, got shape {tuple(data.shape)} (a 2D slice?)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{what} {path} holds {bad} NaN/Inf voxels; fix or mask them before use")
    affine = img.affine
    if affine is None or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{what} {path} has a singular affine (no voxel spacing/orientation)")
    return nib.Nifti1Image(data, affine, img.header)


def save_volume(data: np.ndarray, like: nib.Nifti1Image, path: str | Path, dtype=None) -> Path:
    """Write ``data`` with the affine of ``like`` (the PET grid); qform and sform both set, code 1."""
    if data.shape != like.shape[:3]:
        raise InputError(f"cannot save {data.shape} array on a {like.shape[:3]} grid")
    arr = np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)
    img = nib.Nifti1Image(arr, like.affine)
    img.set_qform(like.affine, code=1)
    img.set_sform(like.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def save_mask(mask: np.ndarray, pet: nib.Nifti1Image, path: str | Path) -> Path:
    """A label mask (uint8) on the PET grid, with the PET affine."""
    return save_volume(np.asarray(mask).astype(np.uint8), pet, path)


def voxel_volume_ml(img: nib.Nifti1Image) -> float:
    return float(abs(np.linalg.det(img.affine[:3, :3]))) / 1000.0


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, atol_mm: float = 1e-3) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=atol_mm)


def check_same_grid(pet: nib.Nifti1Image, other: nib.Nifti1Image, what: str = "CT") -> None:
    if not same_grid(pet, other):
        zooms = lambda im: "x".join(f"{z:.2f}" for z in im.header.get_zooms()[:3])  # noqa: E731
        raise InputError(
            f"{what} grid {other.shape[:3]} @ {zooms(other)} mm does not match the PET grid "
            f"{pet.shape[:3]} @ {zooms(pet)} mm (or their affines differ); "
            "resample it onto the PET grid first (mmtok.grounding.io.resample_to_pet)"
        )


def resample_to_pet(ct: nib.Nifti1Image, pet: nib.Nifti1Image, order: int = 1) -> nib.Nifti1Image:
    """CT resampled onto the PET grid (autoPET's CTres): world-coordinate resampling, -1024 HU outside."""
    out = nibabel.processing.resample_from_to(ct, pet, order=order, mode="constant", cval=CT_FILL_HU)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), pet.affine)


# ----------------------------------------------------------------------------- orientation


def axis_codes(affine: np.ndarray) -> tuple[str, str, str]:
    """RAS+ axis codes of the array axes, e.g. ('L', 'P', 'S'): the direction each index increases."""
    return tuple(nib.aff2axcodes(affine))  # type: ignore[return-value]


def axial_axis(affine: np.ndarray) -> tuple[int, bool]:
    """(array axis that runs head-foot, True if its index increases towards the head)."""
    codes = axis_codes(affine)
    for ax, c in enumerate(codes):
        if c in ("S", "I"):
            return ax, c == "S"
    raise InputError(f"the affine has no head-foot axis (axis codes {codes}); cannot number axial slices")


def lr_axis(affine: np.ndarray) -> tuple[int, bool]:
    """(array axis that runs left-right, True if its index increases towards the patient's left)."""
    codes = axis_codes(affine)
    for ax, c in enumerate(codes):
        if c in ("L", "R"):
            return ax, c == "L"
    raise InputError(f"the affine has no left-right axis (axis codes {codes})")


def report_slice_to_index(
    slice_number: int, n_axial: int, head_increasing: bool, origin: str = "head", base: int = 1
) -> int:
    """Array index along the axial axis of a report's slice number.

    ``origin`` is where the report counts from ("head": slice ``base`` is the top-most image, the
    usual workstation order; "foot": the bottom-most). Raises ``InputError`` if out of range.
    """
    if origin not in ("head", "foot") or base not in (0, 1):
        raise InputError(f"slice numbering must be origin head|foot and base 0|1, got {origin!r}/{base!r}")
    pos = slice_number - base  # 0-based position counted from the origin end
    if not 0 <= pos < n_axial:
        raise InputError(
            f"slice {slice_number} is outside the {n_axial} axial slices ({base}..{n_axial - 1 + base})"
        )
    from_top_index = n_axial - 1 - pos if head_increasing else pos  # index of the pos-th slice from head
    return from_top_index if origin == "head" else n_axial - 1 - from_top_index


def index_to_report_slice(index: int, n_axial: int, head_increasing: bool, origin="head", base=1) -> int:
    """Inverse of :func:`report_slice_to_index`."""
    from_head = n_axial - 1 - index if head_increasing else index
    pos = from_head if origin == "head" else n_axial - 1 - from_head
    return pos + base


# ----------------------------------------------------------------------------- DICOM PET -> SUV


@dataclass
class SuvInfo:
    """How a DICOM PET series was converted to SUVbw (written next to outputs, logged)."""

    units: str
    decay_correction: str
    time_reference: str  # which tag gave the scan reference time
    injection_time_source: str
    scan_time: str
    injection_time: str
    delta_t_s: float
    half_life_s: float
    injected_dose_bq: float
    weight_kg: float
    decay_factor: float
    n_slices: int
    notes: list[str] = field(default_factory=list)


def _tag(ds, keyword: str, tag: str, what: str = ""):
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        raise InputError(f"DICOM PET: missing {keyword} ({tag}){what}; cannot compute SUV without it")
    return value


def _parse_dt(date: str, time: str, keyword: str) -> dt.datetime:
    """DICOM DA + TM (HHMMSS.FFFFFF, parts optional) -> datetime."""
    t = str(time).strip()
    try:
        hh, mm, ss = int(t[0:2]), int(t[2:4] or 0), float(t[4:] or 0)
        d = dt.datetime.strptime(str(date).strip(), "%Y%m%d")
    except (ValueError, IndexError):
        raise InputError(f"DICOM PET: {keyword} {date!r} {time!r} is not a valid DICOM date/time") from None
    return d + dt.timedelta(hours=hh, minutes=mm, seconds=ss)


def _parse_dtm(value: str, keyword: str) -> dt.datetime:
    v = str(value).strip().split("+")[0].split("-")[0]
    if len(v) < 8:
        raise InputError(f"DICOM PET: {keyword} {value!r} is not a valid DICOM datetime")
    return _parse_dt(v[:8], v[8:] or "000000", keyword)


def _same(slices, keyword: str, tag: str):
    values = {str(getattr(s, keyword, None)) for s in slices}
    if len(values) > 1:
        raise InputError(f"DICOM PET: contradictory {keyword} ({tag}) across slices: {sorted(values)[:3]}")


def read_dicom_series(folder: str | Path, modality: str = "PT") -> list:
    """The slices of one ``modality`` (PT or CT) series in ``folder``; non-DICOM files are ignored."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    what = {"PT": "PET", "CT": "CT"}[modality]
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder not found: {folder}")
    slices = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f))
        except (InvalidDicomError, OSError, ValueError):
            continue
        if getattr(ds, "Modality", None) == modality:
            slices.append(ds)
    if not slices:
        raise InputError(f"no DICOM {what} (Modality {modality}) files in {folder}")
    series = {getattr(s, "SeriesInstanceUID", None) for s in slices}
    if len(series) > 1:
        raise InputError(
            f"{folder} holds {len(series)} {what} series (SeriesInstanceUID); pass one series folder"
        )
    return slices


def _geometry(slices) -> tuple[list, np.ndarray]:
    """Slices sorted along the slice normal, and the voxel->RAS affine of array [col, row, slice]."""
    for kw, tag in (
        ("ImageOrientationPatient", "0020,0037"),
        ("ImagePositionPatient", "0020,0032"),
        ("PixelSpacing", "0028,0030"),
    ):
        for s in slices:
            _tag(s, kw, tag)
    _same(slices, "ImageOrientationPatient", "0020,0037")
    _same(slices, "PixelSpacing", "0028,0030")
    iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pos = [np.array(s.ImagePositionPatient, dtype=float) for s in slices]
    order = np.argsort([p @ normal for p in pos])
    slices = [slices[i] for i in order]
    pos = [pos[i] for i in order]
    dr, dc = (float(v) for v in slices[0].PixelSpacing)  # row spacing, column spacing
    if len(slices) > 1:
        steps = np.array([(pos[i + 1] - pos[i]) @ normal for i in range(len(pos) - 1)])
        if steps.min() <= 1e-3:
            raise InputError(
                "DICOM PET: two slices share one ImagePositionPatient (0020,0032); duplicate files?"
            )
        if steps.max() - steps.min() > 0.01 * steps.mean() + 1e-3:
            raise InputError(
                f"DICOM PET: uneven slice spacing in ImagePositionPatient (0020,0032): "
                f"{steps.min():.3f}-{steps.max():.3f} mm (missing slices?)"
            )
        slice_vec = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        thick = float(_tag(slices[0], "SliceThickness", "0018,0050", " for a single-slice series"))
        slice_vec = normal * thick
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc  # array axis 0 = column index (along a row)
    lps[:3, 1] = col_dir * dr  # array axis 1 = row index
    lps[:3, 2] = slice_vec
    lps[:3, 3] = pos[0]
    return slices, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS


def _scan_and_injection_times(first, slices, notes: list[str]) -> tuple[dt.datetime, str, dt.datetime, str]:
    series_dt = _parse_dt(
        _tag(first, "SeriesDate", "0008,0021"),
        _tag(first, "SeriesTime", "0008,0031"),
        "SeriesDate/SeriesTime",
    )
    ref, ref_name = series_dt, "SeriesTime"
    acq = [
        _parse_dt(s.AcquisitionDate, s.AcquisitionTime, "AcquisitionDate/AcquisitionTime")
        for s in slices
        if getattr(s, "AcquisitionDate", None) and getattr(s, "AcquisitionTime", None)
    ]
    if acq and series_dt > min(acq):
        # Series time after the acquisition: a post-processed series (QIBA). GE keeps the original scan
        # start in a private tag; without it there is no trustworthy reference time.
        ge = first.get((0x0009, 0x100D))
        if ge is None or not str(ge.value).strip():
            raise InputError(
                "DICOM PET: SeriesTime (0008,0031) is after AcquisitionTime (0008,0032) (post-processed "
                "series) and the GE private scan start (0009,100D) is missing; cannot pick a decay reference"
            )
        ref, ref_name = _parse_dtm(str(ge.value), "GE private scan datetime (0009,100D)"), "GE (0009,100D)"
        notes.append("series time after acquisition time: used the GE private scan start (0009,100D)")
    seq = _tag(first, "RadiopharmaceuticalInformationSequence", "0054,0016")
    if len(seq) == 0:
        raise InputError("DICOM PET: RadiopharmaceuticalInformationSequence (0054,0016) is empty")
    rp = seq[0]
    if getattr(rp, "RadiopharmaceuticalStartDateTime", None):
        inj = _parse_dtm(rp.RadiopharmaceuticalStartDateTime, "RadiopharmaceuticalStartDateTime (0018,1078)")
        inj_name = "RadiopharmaceuticalStartDateTime"
    else:
        t = _tag(rp, "RadiopharmaceuticalStartTime", "0018,1072", " (and no StartDateTime (0018,1078))")
        inj = _parse_dt(ref.strftime("%Y%m%d"), t, "RadiopharmaceuticalStartTime (0018,1072)")
        inj_name = "RadiopharmaceuticalStartTime"
        if inj > ref:  # a time without a date that lies after the scan: injected before midnight
            inj -= dt.timedelta(days=1)
            notes.append("injection time after scan time on the same date: assumed a midnight crossing")
    if inj > ref:
        raise InputError(
            f"DICOM PET: {inj_name} ({inj.isoformat()}) is after the scan reference "
            f"{ref_name} ({ref.isoformat()})"
        )
    return ref, ref_name, inj, inj_name


def dicom_pet_to_suv(folder: str | Path) -> tuple[nib.Nifti1Image, SuvInfo]:
    """Read one DICOM PET series and convert it to SUVbw (g/mL) on its own grid, QIBA procedure.

    SUVbw = C[Bq/mL] * W[g] / (D[Bq] * 2^(-dt / T_half)), dt from injection to the series start
    (DecayCorrection START). The per-slice RescaleSlope/Intercept are applied first.
    """
    slices = read_dicom_series(folder)
    slices, affine = _geometry(slices)
    first = slices[0]
    notes: list[str] = []
    for kw, tag in (
        ("Units", "0054,1001"),
        ("DecayCorrection", "0054,1102"),
        ("PatientWeight", "0010,1030"),
        ("SeriesTime", "0008,0031"),
    ):
        _tag(first, kw, tag)
        _same(slices, kw, tag)
    units = str(first.Units).upper()
    if units not in ("BQML", "CNTS", "GML"):
        raise InputError(
            f"DICOM PET: Units (0054,1001) is {units!r}; only BQML, CNTS (Philips) or GML convert"
        )
    corrected = [str(v).upper() for v in (getattr(first, "CorrectedImage", None) or [])]
    if units != "GML" and not {"ATTN", "DECY"} <= set(corrected):
        raise InputError(
            f"DICOM PET: CorrectedImage (0028,0051) is {corrected or 'missing'}; SUV needs ATTN and DECY"
        )
    decay = str(first.DecayCorrection).upper()
    if decay not in ("START", "ADMIN"):
        raise InputError(f"DICOM PET: DecayCorrection (0054,1102) is {decay!r}; SUV needs START or ADMIN")
    weight = float(first.PatientWeight)
    if not 1.0 <= weight <= 400.0:
        raise InputError(
            f"DICOM PET: PatientWeight (0010,1030) {weight} kg is implausible (expected kg, 1-400)"
        )

    seq = _tag(first, "RadiopharmaceuticalInformationSequence", "0054,0016")
    rp = seq[0] if len(seq) else None
    dose = float(_tag(rp, "RadionuclideTotalDose", "0018,1074")) if rp is not None else 0.0
    half_life = float(_tag(rp, "RadionuclideHalfLife", "0018,1075")) if rp is not None else 0.0
    if dose <= 0:
        raise InputError(f"DICOM PET: RadionuclideTotalDose (0018,1074) is {dose} Bq; it must be positive")
    if half_life <= 0:
        raise InputError(f"DICOM PET: RadionuclideHalfLife (0018,1075) is {half_life} s; it must be positive")
    if dose < 1e6:  # a few MBq at most would be a dose in MBq written where Bq belongs
        raise InputError(
            f"DICOM PET: RadionuclideTotalDose (0018,1074) {dose} looks like MBq; DICOM needs Bq"
        )

    ref, ref_name, inj, inj_name = _scan_and_injection_times(first, slices, notes)
    delta = (ref - inj).total_seconds()
    if decay == "ADMIN":  # already decay-corrected to the injection time
        factor, notes = 1.0, [*notes, "DecayCorrection ADMIN: no decay applied"]
    else:
        factor = 2.0 ** (-delta / half_life)
    log.info("SUV: decay reference %s (%s), injection %s, dt=%.0f s", ref_name, ref, inj_name, delta)

    planes = []
    for s in slices:
        slope = float(
            _tag(s, "RescaleSlope", "0028,1053", f" in instance {getattr(s, 'InstanceNumber', '?')}")
        )
        intercept = float(getattr(s, "RescaleIntercept", 0.0) or 0.0)
        plane = s.pixel_array.astype(np.float64) * slope + intercept
        if units == "CNTS":  # Philips: counts -> SUV via a private per-slice factor
            el = s.get((0x7053, 0x1000))
            if el is None:
                raise InputError(
                    "DICOM PET: Units CNTS needs the Philips SUV scale factor (7053,1000); it is missing"
                )
            plane = plane * float(el.value)
        planes.append(plane.T)  # [row, col] -> [col, row] to match the affine's axis order
    data = np.stack(planes, axis=-1)
    if units == "BQML":
        data = data * (weight * 1000.0) / (dose * factor)
    if not np.isfinite(data).all():
        raise InputError("DICOM PET: pixel data convert to NaN/Inf SUVs; check RescaleSlope (0028,1053)")
    if data.max() < 5.0:
        notes.append(f"max SUV {data.max():.2f} < 5: check weight, dose and times (a low max is unusual)")
    info = SuvInfo(
        units=units,
        decay_correction=decay,
        time_reference=ref_name,
        injection_time_source=inj_name,
        scan_time=ref.isoformat(),
        injection_time=inj.isoformat(),
        delta_t_s=delta,
        half_life_s=half_life,
        injected_dose_bq=dose,
        weight_kg=weight,
        decay_factor=factor,
        n_slices=len(slices),
        notes=notes,
    )
    return nib.Nifti1Image(data.astype(np.float32), affine), info


def load_pet(path: str | Path) -> tuple[nib.Nifti1Image, SuvInfo | None]:
    """A PET volume in SUV: a NIfTI file (taken to be SUV already) or a DICOM series folder (converted)."""
    path = Path(path)
    if path.is_dir():
        img, info = dicom_pet_to_suv(path)
        return img, info
    return load_volume(path, "PET"), None


# ----------------------------------------------------------------------------- DICOM CT, uploads

MAX_ZIP_BYTES = 4 * 1024**3  # uncompressed; a whole-body CT series is ~0.5 GB
MAX_ZIP_FILES = 20000


def dicom_ct_to_hu(folder: str | Path) -> nib.Nifti1Image:
    """One DICOM CT series -> a float32 NIfTI in Hounsfield units (RescaleSlope/Intercept applied)."""
    slices, affine = _geometry(read_dicom_series(folder, "CT"))
    planes = []
    for s in slices:
        slope = float(getattr(s, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(s, "RescaleIntercept", 0.0) or 0.0)
        planes.append((s.pixel_array.astype(np.float32) * slope + intercept).T)
    return nib.Nifti1Image(np.stack(planes, axis=-1).astype(np.float32), affine)


def load_ct(path: str | Path) -> nib.Nifti1Image:
    """A CT volume in HU: a NIfTI file or a DICOM series folder."""
    path = Path(path)
    return dicom_ct_to_hu(path) if path.is_dir() else load_volume(path, "CT")


def extract_zip(path: str | Path, dest: str | Path, max_bytes: int = MAX_ZIP_BYTES) -> Path:
    """Unpack an uploaded zip into ``dest`` safely: no absolute or ``..`` member names, no links, at most
    ``MAX_ZIP_FILES`` members and ``max_bytes`` actually written (declared sizes can lie)."""
    import shutil
    import stat
    import zipfile
    from pathlib import PurePosixPath

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if len(members) > MAX_ZIP_FILES:
                n = len(members)
                raise InputError(f"{Path(path).name}: {n} files in the zip (at most {MAX_ZIP_FILES})")
            written = 0
            for m in members:
                name = PurePosixPath(m.filename.replace("\\", "/"))
                if name.is_absolute() or ".." in name.parts or stat.S_ISLNK(m.external_attr >> 16):
                    raise InputError(f"{Path(path).name}: unsafe member {m.filename!r} in the zip")
                target = dest.joinpath(*name.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise InputError(f"{Path(path).name}: unpacks to more than {max_bytes >> 20} MB")
                        out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise InputError(f"{Path(path).name} is not a readable zip file ({type(e).__name__}: {e})") from None
    except InputError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def _nifti_suffix(path: Path) -> str | None:
    """'.nii' or '.nii.gz' if the file's bytes are a NIfTI-1/2 header (plain or gzipped), else None."""
    import gzip

    with open(path, "rb") as f:
        head = f.read(4)
    try:
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                head, suffix = g.read(548), ".nii.gz"
        else:
            with open(path, "rb") as f:
                head, suffix = f.read(548), ".nii"
    except (OSError, EOFError):
        return None
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return suffix
    if len(head) >= 540 and head[4:7] in (b"n+2", b"ni2"):
        return suffix
    return None


def read_upload(path: str | Path, what: str, workdir: str | Path) -> nib.Nifti1Image:
    """An uploaded PET (-> SUV) or CT (-> HU) volume, recognised by its content whatever its name:
    a NIfTI (plain or gzipped) or a zip of one DICOM series."""
    import os
    import zipfile

    path, workdir = Path(path), Path(workdir)
    if not path.is_file() or path.stat().st_size == 0:
        raise InputError(f"{what}: the uploaded file {path.name} is missing or empty")
    if zipfile.is_zipfile(path):
        folder = extract_zip(path, workdir / f"{what.lower()}-dicom")
        return dicom_pet_to_suv(folder)[0] if what == "PET" else dicom_ct_to_hu(folder)
    suffix = _nifti_suffix(path)
    if suffix is None:
        raise InputError(f"{what}: {path.name} is neither a NIfTI volume nor a zip of a DICOM series")
    if not path.name.lower().endswith(suffix):  # nibabel picks its reader by the name
        named = workdir / f"{what.lower()}-upload{suffix}"
        named.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path.resolve(), named)
        path = named
    return load_volume(path, what)
