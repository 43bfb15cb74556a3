"""Continuous image tokenizer: a KL autoencoder (diffusers' ``AutoencoderKL``) with latent scaling.

``KLTokenizer`` wraps a diffusers ``AutoencoderKL`` built from JSON-able keyword arguments, so the same
class holds the small autoencoders mmtok trains on its test beds (``configs/kl-f8-64/kl-f8-64.yaml``) and any
real diffusers VAE (a Stable Diffusion VAE for 256x256 work) loaded with ``from_diffusers``::

    tok = mmtok.load("kl-f8-64")                    # 64x64 RGB -> 16 x 8 x 8 latents
    z = tok.encode(images)                          # images: B x 3 x H x W in [-1, 1]; z ~ unit variance
    recon = tok.decode(z)                           # B x 3 x H x W in [-1, 1]
    sd = KLTokenizer.from_diffusers("path/to/sd-vae")   # folder or hub id; uses its scaling_factor

Latent scaling follows diffusers' convention ``z_scaled = (z - shift) * scale`` with
``scale = 1 / std``, but per channel: generators (xAR, flow matching) assume roughly unit-variance
latents in every channel. The shift and std are buffers, estimated during training as running
averages over training batches, so they live in the state dict, the EMA copy averages them along
with the weights, and the exported ``model.safetensors`` carries exactly what ``encode`` uses.

The reconstruction metrics helpers (``check_images``, ``reconstruction_metrics``) are shared with the
binary tokenizer (``image_binary.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from ..errors import InputError, MmtokError
from ..hub import MmtokModel, register_model

# AutoencoderKL config keys that shape the network; everything else in a diffusers config.json
# (sample_size, force_upcast, _diffusers_version ...) does not change the weights.
_VAE_KEYS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "latent_channels",
    "norm_num_groups",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
)


# ----------------------------------------------------------------------------- shared helpers


def check_images(images: Any, channels: int, factor: int, who: str) -> torch.Tensor:
    """Validate a B x C x H x W image batch (a single C x H x W image gets a batch axis).

    Raises:
        InputError: not a floating tensor, wrong channel count, sides not multiples of ``factor``,
            or NaN/Inf values -- one line saying what to do.
    """
    if not torch.is_tensor(images):
        raise InputError(f"{who} expects a torch tensor of images, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != channels:
        raise InputError(
            f"{who} expects images of shape B x {channels} x H x W in [-1, 1], got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise InputError(
            f"{who} expects float images in [-1, 1], got {images.dtype}: use mmtok.data.from_uint8"
        )
    h, w = images.shape[-2:]
    if h % factor or w % factor or h == 0 or w == 0:
        raise InputError(
            f"{who} needs image sides that are multiples of {factor}, got {h}x{w}: crop or resize first"
        )
    if not torch.isfinite(images).all():
        raise InputError(f"{who} got images with NaN or Inf values")
    return images


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03), averaged
    over channels, computed on the valid region only. Matches ``skimage.metrics.structural_similarity``
    with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255`` to ~1e-6,
    in torch so that a whole batch costs one conv.

    Args:
        a, b: B x C x H x W tensors on the same scale (e.g. uint8 values as float64).
    """
    g = _gaussian_window().to(a.device)
    c = a.shape[1]
    win = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()
    a, b = a.double(), b.double()
    blur = lambda x: F.conv2d(x, win, groups=c)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3)).float()


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8-rounded pixel values in [0, 255] (as float64, for metrics)."""
    return ((images.detach().double() + 1) * 127.5).round().clamp(0, 255)


def psnr(a_pixels: torch.Tensor, b_pixels: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two [0, 255] pixel batches (identical images are capped at 100 dB)."""
    mse = ((a_pixels - b_pixels) ** 2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(255.0**2 / mse.clamp_min(255.0**2 * 1e-10))).float()


@torch.no_grad()
def reconstruction_metrics(
    reconstruct, dataset, device: str | torch.device = "cpu", batch_size: int = 64
) -> dict[str, float]:
    """PSNR / SSIM of ``reconstruct(images)`` over ``dataset``, overall and per ``"source"``.

    Both metrics are computed per image on uint8-rounded pixels ([0, 255], as a saved PNG would hold
    them) and averaged over images. Items with a ``"source"`` string (the mixture dataset) also get
    ``psnr_<source>`` / ``ssim_<source>``.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    values: dict[str, list[torch.Tensor]] = {"psnr": [], "ssim": []}
    sources: list[str] = []
    for batch in loader:
        images = batch["image"].to(device).float()
        recon = reconstruct(images)
        real, fake = to_pixels(images).cpu(), to_pixels(recon).cpu()
        values["psnr"].append(psnr(real, fake))
        values["ssim"].append(ssim(real, fake))
        if isinstance(batch.get("source"), list):
            sources += batch["source"]
    metrics = {k: torch.cat(v) for k, v in values.items()}
    out = {k: float(v.mean()) for k, v in metrics.items()}
    if len(sources) == len(metrics["psnr"]):
        for name in sorted(set(sources)):
            mask = torch.tensor([s == name for s in sources])
            for k, v in metrics.items():
                out[f"{k}_{name}"] = float(v[mask].mean())
    out["n"] = len(metrics["psnr"])
    return out


# ----------------------------------------------------------------------------- the tokenizer


class RefinedConvOut(nn.Conv2d):
    """A decoder's last conv (features -> pixels) plus a zero-initialised residual head of 3x3 convs.

    It subclasses ``nn.Conv2d`` and keeps the conv's own ``weight`` and ``bias`` names, so a decoder
    trained without the head loads into it unchanged (only ``refine.*`` is new).
    """

    def __init__(self, conv: nn.Conv2d, channels: int):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            self.bias.copy_(conv.bias)
        self.refine = nn.Sequential(
            nn.Conv2d(conv.in_channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, conv.out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.refine(x)


@register_model
class KLTokenizer(MmtokModel):
    """Continuous KL autoencoder tokenizer (diffusers ``AutoencoderKL``) with per-channel latent scaling.

    The image side shrinks by ``f = 2 ** (len(block_out_channels) - 1)``: a 64x64 image with four
    blocks is an 8x8 grid of ``latent_channels``-dim latents.

    Args:
        block_out_channels: channels of each resolution level of the encoder (the decoder mirrors it).
        layers_per_block: ResNet blocks per level (the decoder has one more, as in diffusers).
        latent_channels: channels of the latent grid.
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``. Not
            more groups than the first level has channels / 4: one channel per group (instance norm)
            trained slower in a trial.
        in_channels: image channels in.
        out_channels: image channels out.
        down_block_types: diffusers encoder block names (default: ``DownEncoderBlock2D`` per level).
        up_block_types: diffusers decoder block names (default: ``UpDecoderBlock2D`` per level).
        act_fn: activation name understood by diffusers.
        use_quant_conv: diffusers' 1x1 conv after the encoder (SD VAEs have it).
        use_post_quant_conv: diffusers' 1x1 conv before the decoder.
        mid_block_add_attention: self-attention in the middle block (at the latent resolution).
        scaling_factor: initial latent scale (``1 / std``); replaced by the running estimate while
            training when ``learn_scaling`` is on.
        shift_factor: initial latent shift (mean), diffusers' ``shift_factor``.
        learn_scaling: estimate per-channel shift and std of the latents during ``training_step``.
        stats_momentum: momentum of that running estimate (a plain running mean over the first
            ``1 / (1 - momentum)`` batches, then exponential).
        kl_weight: weight of the KL term, on LDM's scale (KL summed over latent elements vs. the
            reconstruction loss summed over pixels; both divided by the pixel count here).
        pixel_loss: "l1", "l2" or "l1+l2" reconstruction loss on [-1, 1] pixels.
        train_encoder: False fine-tunes the decoder alone: the encoder, its 1x1 conv and the latent
            statistics are frozen and the decoder learns from the posterior means. The latents
            (and every generator trained on them, and their caches' contents) stay exactly the
            same while reconstructions improve.
        refine_channels: > 0 adds a residual head of three 3x3 convs (this many channels) next to
            the decoder's last conv, at full resolution, where photo texture lives: the last level
            of a small trunk has few channels. Its last conv starts at zero, so a trained decoder
            loaded into it (``init_strict: false``) decodes exactly as before until it trains.
        train_decoder: False (with ``train_encoder: false`` and a head) trains the head alone: the
            trunk is frozen and the backward pass stops at the head, several times cheaper a step.
    """

    task = "image-tokenizer"

    def __init__(
        self,
        block_out_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        latent_channels: int = 16,
        norm_num_groups: int = 8,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] | None = None,
        up_block_types: Sequence[str] | None = None,
        act_fn: str = "silu",
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        learn_scaling: bool = True,
        stats_momentum: float = 0.99,
        kl_weight: float = 1e-6,
        pixel_loss: str = "l1",
        train_encoder: bool = True,
        refine_channels: int = 0,
        train_decoder: bool = True,
    ):
        super().__init__()
        levels = len(block_out_channels)
        if levels < 1 or any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"block_out_channels {list(block_out_channels)} must be non-empty multiples of "
                f"norm_num_groups {norm_num_groups}"
            )
        if pixel_loss not in ("l1", "l2", "l1+l2"):
            raise ValueError(f"pixel_loss must be l1, l2 or l1+l2, got {pixel_loss!r}")
        if not 0 <= stats_momentum < 1 or scaling_factor <= 0:
            raise ValueError("stats_momentum must be in [0, 1) and scaling_factor positive")
        self.vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types or ("DownEncoderBlock2D",) * levels),
            up_block_types=tuple(up_block_types or ("UpDecoderBlock2D",) * levels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if refine_channels < 0:
            raise ValueError(f"refine_channels must be >= 0, got {refine_channels}")
        if refine_channels:
            self.vae.decoder.conv_out = RefinedConvOut(self.vae.decoder.conv_out, refine_channels)
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.downsample_factor = 2 ** (levels - 1)
        self.learn_scaling, self.stats_momentum = learn_scaling, stats_momentum
        self.kl_weight, self.pixel_loss, self.train_encoder = kl_weight, pixel_loss, train_encoder
        if not train_encoder:
            for part in (self.vae.encoder, self.vae.quant_conv):
                if part is not None:
                    part.requires_grad_(False)
        if not train_decoder:
            if train_encoder or not refine_channels:
                raise ValueError(
                    "train_decoder: false trains the head alone: it needs train_encoder: false "
                    "and refine_channels > 0"
                )
            for name, param in self.vae.named_parameters():
                param.requires_grad_(".refine." in name)
        # Persistent buffers: saved in model.safetensors, averaged by the trainer's EMA with the weights.
        self.register_buffer("latent_shift", torch.full((latent_channels,), float(shift_factor)))
        self.register_buffer("latent_std", torch.full((latent_channels,), 1.0 / scaling_factor))
        # Batches seen by the running estimate (int: the EMA copies it instead of averaging it).
        self.register_buffer("stats_batches", torch.zeros((), dtype=torch.long))

    # -- shapes and scaling ---------------------------------------------------------------------

    @property
    def scaling_factor(self) -> torch.Tensor:
        """Per-channel ``1 / std`` that ``encode`` multiplies (shifted) latents by."""
        return 1.0 / self.latent_std

    def latent_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        """(C, H / f, W / f) of the latents of an H x W image."""
        h, w = image_hw
        f = self.downsample_factor
        if h % f or w % f:
            raise InputError(f"image sides must be multiples of {f}, got {h}x{w}")
        return (self.latent_channels, h // f, w // f)

    def _scale(self, z: torch.Tensor) -> torch.Tensor:
        shift, std = self.latent_shift.view(1, -1, 1, 1), self.latent_std.view(1, -1, 1, 1)
        return (z - shift.to(z.dtype)) / std.to(z.dtype)

    def _unscale(self, z: torch.Tensor) -> torch.Tensor:
        shift, std = self.latent_shift.view(1, -1, 1, 1), self.latent_std.view(1, -1, 1, 1)
        return z * std.to(z.dtype) + shift.to(z.dtype)

    # -- public API -----------------------------------------------------------------------------

    def encode(
        self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images B x 3 x H x W in [-1, 1] -> scaled latents B x C x H/f x W/f (about unit variance).

        Args:
            images: float images; sides must be multiples of ``downsample_factor``.
            sample: draw from the posterior instead of taking its mean (mode).
            generator: torch generator for that draw.
        """
        images = check_images(images, self.in_channels, self.downsample_factor, "KLTokenizer.encode")
        dist = self.vae.encode(images).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return self._scale(z)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents B x C x h x w -> images B x 3 x (f h) x (f w), clamped to [-1, 1]."""
        if not torch.is_tensor(latents) or latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise InputError(
                f"KLTokenizer.decode expects B x {self.latent_channels} x h x w latents, got {shape}"
            )
        if not torch.isfinite(latents).all():
            raise InputError("KLTokenizer.decode got latents with NaN or Inf values")
        return self.vae.decode(self._unscale(latents)).sample.clamp(-1, 1)

    def forward(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Reconstruction: ``decode(encode(images, sample))``."""
        return self.decode(self.encode(images, sample=sample))

    # -- training -------------------------------------------------------------------------------

    @torch.no_grad()
    def _update_stats(self, z: torch.Tensor) -> None:
        z = z.float().transpose(0, 1).reshape(self.latent_channels, -1)
        mean, var = z.mean(1), z.var(1, unbiased=False)
        n = int(self.stats_batches)
        # Plain average while few batches were seen (no bias towards the init), then exponential.
        m = min(self.stats_momentum, n / (n + 1))
        var_run = self.latent_std.float() ** 2
        # Total variance of the mixture of the old estimate and this batch (law of total variance).
        new_mean = m * self.latent_shift + (1 - m) * mean
        new_var = m * (var_run + (self.latent_shift - new_mean) ** 2) + (1 - m) * (
            var + (mean - new_mean) ** 2
        )
        self.latent_shift.copy_(new_mean)
        self.latent_std.copy_(new_var.clamp_min(1e-12).sqrt())
        self.stats_batches += 1

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction (L1 / L2) + ``kl_weight`` * KL on one batch; updates the latent statistics."""
        images = batch["image"]
        if not self.train_encoder:
            return self._decoder_step(images)
        dist = self.vae.encode(images).latent_dist
        z = dist.sample()
        if self.learn_scaling and self.training:
            # Statistics of the posterior mean: what encode() returns by default, so encode's output
            # is standardised even early on, when the posterior noise still dominates the samples.
            self._update_stats(dist.mode())
        rec, logs = self._reconstruction_loss(z, images)
        # LDM scale: KL summed over latent elements per image, reconstruction summed over pixels;
        # dividing both by the pixel count keeps kl_weight comparable with SD's 1e-6.
        kl = dist.kl().float().mean() / images[0].numel()
        loss = rec + self.kl_weight * kl
        return loss, {**logs, "kl": kl.detach(), "latent_std": self.latent_std.mean()}

    def _reconstruction_loss(self, z: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``pixel_loss`` of ``decode(z)`` against ``images``, with its L1 and PSNR for the logs."""
        diff = self.vae.decode(z).sample.float() - images.float()
        l1, l2 = diff.abs().mean(), diff.pow(2).mean()
        rec = {"l1": l1, "l2": l2, "l1+l2": l1 + l2}[self.pixel_loss]
        mse01 = l2.detach() / 4  # MSE on [0, 1] pixels
        return rec, {"l1": l1.detach(), "psnr": -10 * torch.log10(mse01.clamp_min(1e-10))}

    def _decoder_step(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Decoder-only fine-tuning: reconstruct from the frozen encoder's posterior means, which is
        what ``encode`` hands generators, so the decoder is trained on exactly what it will decode."""
        with torch.no_grad():
            z = self.vae.encode(images).latent_dist.mode()
        return self._reconstruction_loss(z, images)

    @torch.no_grad()
    def evaluate(self, dataset, device: str | torch.device = "cpu", batch_size: int = 64) -> dict[str, float]:
        """PSNR (dB) / SSIM of deterministic reconstructions of ``dataset`` (``reconstruction_metrics``)."""
        was_training = self.training
        self.eval()
        try:
            return reconstruction_metrics(lambda x: self(x), dataset, device, batch_size)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def calibrate(
        self, dataset, device: str | torch.device = "cpu", batch_size: int = 64, max_items: int = 2048
    ):
        """Set the latent shift and std exactly from the posterior means of ``dataset``'s images.

        Training already estimates them; this is for a VAE loaded from elsewhere without a known scale.
        Returns the per-channel scaling factor.
        """
        n = min(len(dataset), max_items)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size
        )
        zs = [self.vae.encode(b["image"].to(device).float()).latent_dist.mode().float() for b in loader]
        z = torch.cat(zs).transpose(0, 1).reshape(self.latent_channels, -1)
        self.latent_shift.copy_(z.mean(1))
        self.latent_std.copy_(z.std(1, unbiased=False).clamp_min(1e-6))
        return self.scaling_factor

    # -- real VAEs ------------------------------------------------------------------------------

    @classmethod
    def from_diffusers(
        cls,
        path_or_id: str | os.PathLike,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        subfolder: str | None = None,
    ) -> KLTokenizer:
        """Load any diffusers ``AutoencoderKL`` (a folder with ``config.json`` +
        ``diffusion_pytorch_model.safetensors``, or a hub id when online, e.g.
        ``"stabilityai/sd-vae-ft-mse"``) into a ``KLTokenizer``.

        Args:
            path_or_id: local folder or Hugging Face id.
            scaling_factor: latent scale; default: the VAE config's ``scaling_factor`` (SD: 0.18215).
            shift_factor: latent shift; default: the config's ``shift_factor`` (SD3 / FLUX) or 0.
            subfolder: e.g. "vae" inside a whole pipeline repository.

        The result saves and loads with ``mmtok.save`` / ``mmtok.load`` like a trained one. Its scale
        is not re-estimated (``learn_scaling`` is off); use ``calibrate`` for other data.
        """
        try:
            vae = AutoencoderKL.from_pretrained(str(path_or_id), subfolder=subfolder, use_safetensors=True)
        except Exception as e:  # missing folder/files, offline hub id, not an AutoencoderKL
            raise MmtokError(f"cannot load a diffusers AutoencoderKL from {str(path_or_id)!r}: {e}") from e
        config = dict(vae.config)
        kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k in _VAE_KEYS}
        scale = scaling_factor if scaling_factor is not None else config.get("scaling_factor") or 1.0
        shift = shift_factor if shift_factor is not None else config.get("shift_factor") or 0.0
        tok = cls(**kwargs, scaling_factor=float(scale), shift_factor=float(shift), learn_scaling=False)
        tok.vae.load_state_dict(vae.state_dict(), strict=True)
        mean, std = config.get("latents_mean"), config.get("latents_std")
        if (
            mean is not None
            and std is not None
            and scaling_factor is None
            and len(mean) == tok.latent_channels
        ):
            # Per-channel statistics some VAEs ship: z_scaled = (z - mean) * scaling_factor / std.
            tok.latent_shift.copy_(torch.tensor(mean, dtype=torch.float32))
            tok.latent_std.copy_(torch.tensor(std, dtype=torch.float32) / scale)
        return tok.eval()


def latent_stats(latents: torch.Tensor) -> dict[str, float]:
    """Mean and std of (scaled) latents: a quick check that scaling gives ~0 / ~1."""
    x = latents.detach().float()
    return {"mean": float(x.mean()), "std": float(x.std()), "abs_max": float(x.abs().max())}


__all__ = ["KLTokenizer", "check_images", "latent_stats", "psnr", "reconstruction_metrics", "ssim"]
