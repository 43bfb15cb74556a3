"""Reading user image files safely (validated by content, never by name), writing PNGs, and the
[-1, 1] float <-> uint8 pixel conversions (``to_uint8``, ``from_uint8``, re-exported by ``mmtok.data``).

Every failure is one ``InputError`` line naming the file: missing, empty, not an image, truncated, or
absurdly large (decompression bombs are refused before the pixels are decoded).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

MAX_SIDE = 8192  # refuse larger images before decoding them: a 64 MP image is already 192 MB of RGB
MAX_FILE_BYTES = 64 * 2**20


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[-1, 1] float image(s) CHW (or BCHW) -> uint8 HxWx3 (or BxHxWx3) NumPy array."""
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"to_uint8 expects a [3, H, W] or [B, 3, H, W] tensor, got shape {tuple(image.shape)}"
        )
    pixels = ((image.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-3, -1).numpy()


def from_uint8(array) -> torch.Tensor:
    """uint8 HxWx3 / HxW (grey) array or PIL image (or a BxHxWx3 batch) -> float32 [-1, 1] CHW (BCHW)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise InputError(f"from_uint8 expects uint8 pixels, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise InputError(f"from_uint8 expects an HxWx3 array, got shape {array.shape}")
    image = torch.from_numpy(np.ascontiguousarray(array)).movedim(-1, -3).float()
    return (image / 127.5 - 1.0).contiguous()


def read_image(path: str | os.PathLike, max_side: int = MAX_SIDE) -> torch.Tensor:
    """Image file -> float32 RGB tensor 3 x H x W in [-1, 1] (alpha dropped, grey replicated)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"{path}: file of {size / 2**20:.0f} MB is over the {MAX_FILE_BYTES // 2**20} MB limit"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                # The header is read first: refuse absurd sizes before any pixel is decoded.
                if max(image.size) > max_side:
                    raise InputError(
                        f"{path}: {image.size[0]}x{image.size[1]} image exceeds {max_side} pixels a side"
                    )
                image.load()  # decodes everything: a truncated file fails here
                rgb = _to_rgb(image)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(
            f"{path}: image of too many pixels, refused as a possible decompression bomb ({e})"
        ) from e
    except UnidentifiedImageError as e:
        raise InputError(f"{path}: not an image file (PNG, JPEG, BMP, TIFF, WebP, ...)") from e
    except (
        OSError,
        SyntaxError,
        ValueError,
    ) as e:
        raise InputError(f"{path}: unreadable or truncated image ({e})") from e
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any mode. 16-bit and float greys are rescaled to 8 bits (PIL's convert would clip them to
    white); palettes, grey and alpha go through PIL (alpha is dropped)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
            array = (array - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(array)
        else:  # integer greys: 16-bit range when any value is above 255
            array = array / 257.0 if array.max() > 255 else array
        grey = Image.fromarray(np.nan_to_num(array).clip(0, 255).round().astype(np.uint8), "L")
        return grey.convert("RGB")
    return image.convert("RGB")


def write_png(image: torch.Tensor, path: str | os.PathLike) -> Path:
    """[-1, 1] float 3 x H x W tensor -> lossless PNG, written atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as e:  # unwritable folder, a file in the way, a full disk: one line, no half file
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    return path
