"""The bad-input zoo: builders of hostile or odd files, shared by the reliability tests.

A uniquely named module (not conftest) so that test files can import it. Every builder writes into a
folder and returns the path; nothing is large on disk (the "huge" ones only declare a huge size).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------- images


def good_png(folder: Path, name: str = "good.png", size: int = 64, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        array = rng.integers(0, 65535, size=(size, size), dtype=np.uint16)
        image = Image.fromarray(array)
    else:
        array = rng.integers(0, 255, size=(size, size, 4), dtype=np.uint8)
        image = Image.fromarray(array, "RGBA").convert(mode)
    path = folder / name
    image.save(path)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(folder: Path, side: int = 20000) -> Path:
    """A valid PNG header declaring side x side RGB pixels (1.2 GB decoded), with a token of data."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 4096)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
    path = folder / "bomb.png"
    path.write_bytes(png + _png_chunk(b"IEND", b""))
    return path


def truncated(path: Path, name: str, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    out = path.with_name(name)
    out.write_bytes(data[: int(len(data) * keep)])
    return out


# What the image readers must answer (a substring of the one-line error), and what they must accept.
IMAGE_ERRORS = {
    "missing": "no such file",
    "empty": "empty file (0 bytes)",
    "truncated_png": "truncated",
    "truncated_jpeg": "truncated",
    "text_as_png": "not an image file",
    "bomb_20000": "decompression bomb",
}
IMAGE_ACCEPTED = ("ok_gray", "ok_rgba", "ok_16bit")


def image_zoo(folder: Path) -> dict[str, Path]:
    """Bad or odd image inputs by name; the ``ok_*`` ones must work, the others must be refused."""
    folder.mkdir(parents=True, exist_ok=True)
    good = good_png(folder)
    jpeg = folder / "good.jpg"
    Image.open(good).convert("RGB").save(jpeg, quality=90)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "text.png"
    text.write_text("this is a text file, not a PNG\n")
    return {
        "missing": folder / "missing.png",
        "empty": empty,
        "truncated_png": truncated(good, "truncated.png"),
        "truncated_jpeg": truncated(jpeg, "truncated.jpg"),
        "text_as_png": text,
        "bomb_20000": bomb_png(folder),
        "tiny_1x1": good_png(folder, "one.png", size=1),
        "ok_gray": good_png(folder, "gray.png", mode="L"),
        "ok_rgba": good_png(folder, "rgba.png", mode="RGBA"),
        "ok_16bit": good_png(folder, "sixteen.png", mode="I;16"),
    }


# ----------------------------------------------------------------------------- NIfTI


def nifti(folder: Path, name: str, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path = folder / name
    data = np.asarray(data, np.float32)
    if affine is None:
        nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0])), path)
        return path
    header = nib.Nifti1Header()  # an affine nibabel would refuse to decompose: sform only
    header.set_data_dtype(np.float32)
    header.set_sform(affine, code=1)
    header["qform_code"] = 0
    nib.save(nib.Nifti1Image(data, None, header), path)
    return path


def huge_declared_nifti(folder: Path, dims=(1000, 1000, 1000)) -> Path:
    """A .nii.gz whose header declares 1e9 float32 voxels (4 GB) over a few bytes of data."""
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([4.0, 4.0, 4.0, 1.0]))
    raw = bytearray(img.header.binaryblock)
    struct.pack_into("<8h", raw, 40, 3, *dims, 1, 1, 1, 1)  # dim[0..7]
    path = folder / "huge.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw) + b"\x00" * 4 + b"\x00" * 256))
    return path


def volume_zoo(folder: Path, good: Path | None = None) -> dict[str, Path]:
    """Bad NIfTI inputs by name (all must be refused with one line)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vol = rng.random((16, 16, 16)).astype(np.float32) * 5
    empty = folder / "empty.nii.gz"
    empty.write_bytes(b"")
    text = folder / "text.nii.gz"
    text.write_text("not a NIfTI volume\n")
    nan = vol.copy()
    nan[3, 3, 3] = np.nan
    inf = vol.copy()
    inf[4, 4, 4] = np.inf
    source = good if good is not None else nifti(folder, "good.nii.gz", vol)
    return {
        "missing": folder / "missing.nii.gz",
        "empty": empty,
        "text_as_nii": text,
        "truncated": truncated(source, "truncated.nii.gz", 0.3),
        "2d": nifti(folder, "flat.nii.gz", vol[:, :, 0]),
        "4d": nifti(folder, "four.nii.gz", np.stack([vol, vol, vol], -1)),
        "nan": nifti(folder, "nan.nii.gz", nan),
        "inf": nifti(folder, "inf.nii.gz", inf),
        "singular_affine": nifti(folder, "singular.nii.gz", vol, np.diag([4.0, 4.0, 0.0, 1.0])),
        "1e9_voxels": huge_declared_nifti(folder),
    }


# ----------------------------------------------------------------------------- text and weights


def text_zoo(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty": b"",
        "100kB": ("Left axillary node, SUVmax 7.2 (image 98). " * 2400).encode(),
        "non_utf8": b"Left axillary node \xff\xfe SUVmax 7.2 (image 98).\n",
    }
    out = {}
    for name, data in files.items():
        path = folder / f"{name}.txt"
        path.write_bytes(data)
        out[name] = path
    return out


PROMPTS = {
    "empty": "",
    "100kB": "a red circle " * 7700,
    "non_utf8": b"a red \xff\xfe circle".decode("utf-8", "surrogateescape"),
}


def pickle_weights(folder: Path, like: Path) -> Path:
    """A model folder whose ``model.safetensors`` is a torch pickle (an attacker's file posing as weights)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((like / "config.json").read_text())
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buffer)  # a zip of pickles: never to be unpickled by us
    (folder / "model.safetensors").write_bytes(buffer.getvalue())
    (folder / "pytorch_model.bin").write_bytes(buffer.getvalue())
    return folder
