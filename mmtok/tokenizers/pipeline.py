"""Tokenize pipeline: image files -> latents or codes -> reconstructions, with PSNR / SSIM.

Used by ``mmtok tokenize`` and the web UI. Works with any KL (continuous) or binary (discrete)
tokenizer that ``mmtok.load`` knows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import hub
from ..data.imagefile import read_image, write_png
from ..errors import InputError
from ..runtime import autocast, pick_device, use_bf16


@dataclass
class Reconstruction:
    image: torch.Tensor  # 3 x H x W in [-1, 1], the (cropped) input
    reconstruction: torch.Tensor  # 3 x H x W in [-1, 1]
    tokens: torch.Tensor  # latents C x h x w (kl) or codes h x w (binary)
    psnr: float
    ssim: float


def crop_to_multiple(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Centre-crop a 3 x H x W image so both sides are multiples of ``factor`` (loses < factor px a side)."""
    h, w = image.shape[-2:]
    nh, nw = h - h % factor, w - w % factor
    if nh == 0 or nw == 0:
        raise InputError(f"image of {h}x{w} is smaller than the tokenizer's {factor}x{factor} patch")
    top, left = (h - nh) // 2, (w - nw) // 2
    return image[..., top : top + nh, left : left + nw]


def code_grid_image(codes: torch.Tensor, num_bits: int, cell: int = 8) -> torch.Tensor:
    """Codes h x w -> a picture (3 x h*cell x w*cell in [-1, 1]): the bits of each code spread over R, G
    and B, so equal codes have equal colours and similar codes similar ones."""
    bits = ((codes[..., None] >> torch.arange(num_bits - 1, -1, -1, device=codes.device)) & 1).float()
    thirds = torch.tensor_split(bits, 3, dim=-1)
    channels = []
    for part in thirds:
        weights = 2.0 ** torch.arange(part.shape[-1] - 1, -1, -1, device=codes.device)
        channels.append((part * weights).sum(-1) / max(weights.sum().item(), 1.0))
    rgb = torch.stack(channels) * 2 - 1
    return rgb.repeat_interleave(cell, -2).repeat_interleave(cell, -1)


class TokenizePipeline:
    """Reconstruct images through a shipped tokenizer.

    Args:
        model: a name for ``mmtok.load`` (``kl-f8-64``, ``bin-f8-64``, a folder) or a loaded tokenizer.
        device: ``auto``/``cpu``/``cuda``...; ``bf16``: run under bf16 autocast
            (``None``: where it is faster, see ``mmtok.runtime.bf16_is_fast``).
    """

    def __init__(self, model: str | torch.nn.Module, device: str | None = "cpu", bf16: bool | None = False):
        self.device = pick_device(device)
        self.name = model if isinstance(model, str) else type(model).__name__
        self.model = (hub.load(model) if isinstance(model, str) else model).to(self.device).eval()
        if not hasattr(self.model, "encode") or not hasattr(self.model, "decode"):
            raise InputError(f"{self.name} is not an image tokenizer (it has no encode/decode)")
        self.discrete = hasattr(self.model, "num_bits")
        self.factor = int(self.model.downsample_factor)
        self.bf16 = use_bf16(self.device, bf16)

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor) -> Reconstruction:
        from .image_kl import psnr, ssim, to_pixels  # the model module (diffusers): loaded on use

        image = crop_to_multiple(image, self.factor)
        x = image[None].to(self.device)
        with autocast(self.device, enabled=self.bf16):
            tokens = self.model.encode(x)
            recon = self.model.decode(tokens).float().clamp(-1, 1)
        real, fake = to_pixels(x).cpu(), to_pixels(recon).cpu()
        return Reconstruction(
            image=image,
            reconstruction=recon[0].cpu(),
            tokens=tokens[0].cpu() if self.discrete else tokens[0].float().cpu(),
            psnr=float(psnr(real, fake)[0]),
            ssim=float(ssim(real, fake)[0]) if min(image.shape[-2:]) >= 11 else float("nan"),
        )

    def run_files(self, paths: list[str | os.PathLike], out: str | os.PathLike | None = None) -> list[dict]:
        """Read every file first (a bad one fails before any work), then reconstruct each and write
        ``<stem>.recon.png`` (and ``<stem>.codes.png`` for a binary tokenizer) into ``out``."""
        if not paths:
            raise InputError("no image files given")
        images = [read_image(p) for p in paths]
        results: list[dict[str, Any]] = []
        used: set[str] = set()
        for path, image in zip(paths, images, strict=True):
            start = time.perf_counter()
            r = self.reconstruct(image)
            item: dict[str, Any] = {
                "file": str(path),
                "size": list(image.shape[-2:]),
                "cropped_to": list(r.image.shape[-2:]),
                "psnr": round(r.psnr, 3),
                "ssim": round(r.ssim, 5),
                "token_shape": list(r.tokens.shape),
                "seconds": round(time.perf_counter() - start, 4),
            }
            if self.discrete:
                item["codes"] = r.tokens.tolist()
            if out is not None:
                stem = Path(path).stem
                while stem in used:  # two inputs with one name must not overwrite each other
                    stem += "_"
                used.add(stem)
                item["reconstruction"] = str(write_png(r.reconstruction, Path(out) / f"{stem}.recon.png"))
                if self.discrete:
                    grid = code_grid_image(r.tokens, self.model.num_bits)
                    item["code_grid"] = str(write_png(grid, Path(out) / f"{stem}.codes.png"))
            results.append(item)
        return results
