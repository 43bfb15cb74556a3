"""DiT baseline: the peer the xAR paper compares against, on the same latents, loss and samplers.

The whole latent grid is denoised at once by a diffusers transformer: ``DiTTransformer2DModel``
(adaLN-Zero, class labels) for class-conditional models, and ``PixArtTransformer2DModel`` (DiT with
cross-attention to text tokens, adaLN-single) for text-to-image, fed by the same small text encoder
as xAR (``mmtok.nn.text``). Training is the same flow matching (``x_t = (1 - t) x_0 + t eps``,
logit-normal ``t``, velocity MSE) with condition dropout; sampling uses the same Euler /
Euler-Maruyama samplers and guidance in a doubled batch, ``steps`` network evaluations per image
(xAR spends ``steps`` per entity). In mmtok's terms it is a one-entity (``image``) generator, so
the generation pipeline, CLI and UI serve it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

from ..errors import InputError
from ..hub import MmtokModel, register_model
from ..nn.flow import SAMPLERS, interpolate, logit_normal_times
from ..nn.text import TextEncoder
from ..tokenizers.entities import make_entities
from ..tokenizers.text import TextTokenizer
from .common import check_sample_args, validation_loss


@register_model
class DiTBaseline(MmtokModel):
    """Flow-matching DiT over a whole KL latent grid (diffusers DiT / PixArt transformer).

    Args:
        tokenizer, latent_channels, grid: the latents, as for ``XAR``.
        patch_size: latent patch size of the transformer (1: one token per latent position, as xAR).
        layers, heads, head_dim: the transformer (width ``heads * head_dim``).
        condition: ``class`` (DiT) or ``text`` (PixArt-style cross-attention).
        num_classes: classes (index ``num_classes`` is the null class).
        text_length, text_dim, text_layers: the text encoder (text models).
        label_drop: condition dropout for guidance.
        t_mean, t_std: logit-normal training times.
    """

    task = "image-generator"

    def __init__(
        self,
        tokenizer: str = "kl-f8-64",
        latent_channels: int = 16,
        grid: int = 8,
        patch_size: int = 1,
        layers: int = 6,
        heads: int = 4,
        head_dim: int = 48,
        condition: str = "class",
        num_classes: int = 10,
        text_length: int = 48,
        text_dim: int = 64,
        text_layers: int = 2,
        label_drop: float = 0.1,
        t_mean: float = 0.0,
        t_std: float = 1.0,
    ):
        super().__init__()
        if condition not in ("text", "class"):
            raise ValueError(f"condition must be text or class, got {condition!r}")
        self.tokenizer_name, self.latent_channels, self.grid = tokenizer, latent_channels, grid
        self.condition, self.num_classes, self.text_length = condition, num_classes, text_length
        self.label_drop, self.t_mean, self.t_std = label_drop, t_mean, t_std
        self.entities = make_entities("image", (grid, grid))  # one step: the whole image
        common = dict(
            num_attention_heads=heads, attention_head_dim=head_dim, in_channels=latent_channels,
            out_channels=latent_channels, num_layers=layers, sample_size=grid, patch_size=patch_size,
        )  # fmt: skip
        if condition == "class":
            self.net = DiTTransformer2DModel(**common, num_embeds_ada_norm=num_classes + 1)
        else:
            width = heads * head_dim
            tokenizer = TextTokenizer.clip(context_length=text_length)
            self.text = TextEncoder(tokenizer, width, heads, text_dim, text_layers)
            self.net = PixArtTransformer2DModel(
                **common, cross_attention_dim=width, caption_channels=width, use_additional_conditions=False
            )
        self._anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # device probe

    def null_condition(self, n: int) -> list[Any]:
        return [""] * n if self.condition == "text" else [self.num_classes] * n

    def _encode(self, cond: list[Any]) -> dict[str, torch.Tensor]:
        device = self._anchor.device
        if self.condition == "class":
            labels = torch.as_tensor(cond, dtype=torch.long, device=device).reshape(-1)
            if ((labels < 0) | (labels > self.num_classes)).any():
                raise InputError(f"class labels must be in [0, {self.num_classes}], got {labels.tolist()}")
            return {"class_labels": labels}
        tokens, mask, _ = self.text(list(cond))
        return {"encoder_hidden_states": tokens, "encoder_attention_mask": mask.to(tokens.dtype)}

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        # diffusers' timestep embeddings expect DDPM-like step numbers: feed 1000 t, as xAR does.
        return self.net(x, timestep=1000 * t, **cond, return_dict=False)[0]

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["latent"].float()
        B = x0.shape[0]
        t = logit_normal_times((B,), self.t_mean, self.t_std, device=x0.device)
        noise = torch.randn_like(x0)
        xt = interpolate(x0, noise, t[:, None, None, None])
        cond_in = list(batch["caption"] if self.condition == "text" else batch["label"])
        drop = torch.rand(B) < self.label_drop
        null = self.null_condition(B)
        cond_in = [
            null[i] if drop[i] else (int(c) if self.condition == "class" else c)
            for i, c in enumerate(cond_in)
        ]
        pred = self._velocity(xt, t, self._encode(cond_in))
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        return loss, {"mse": loss.detach()}

    def evaluate(self, dataset, device: str | torch.device = "cpu", batch_size: int = 64) -> dict[str, float]:
        """Validation flow loss at a fixed seed (sample quality: ``mmtok eval generation``)."""
        return validation_loss(self, dataset, device, batch_size)

    @torch.no_grad()
    def sample(
        self,
        cond: Any,
        steps: int = 20,
        cfg: float = 3.0,
        cfg_schedule: str = "constant",
        sampler: str = "euler_maruyama",
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Latents B x C x grid x grid; same arguments as ``XAR.sample`` (one entity: the guidance
        schedule is constant and there is nothing to cache)."""
        cond = check_sample_args(self, cond, steps, cfg, sampler)
        device, B = self._anchor.device, len(cond)
        guided = cfg != 1.0
        c = self._encode(cond + self.null_condition(B) if guided else cond)

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            xin = x.repeat(2, 1, 1, 1) if guided else x
            v = self._velocity(xin, torch.full((len(xin),), t, device=device), c)
            if not guided:
                return v
            v_c, v_u = v.chunk(2)
            return v_u + cfg * (v_c - v_u)

        shape = (B, self.latent_channels, self.grid, self.grid)
        noise = torch.randn(shape, generator=generator).to(device)
        kw = {"generator": generator} if sampler == "euler_maruyama" else {}
        out = SAMPLERS[sampler](velocity, noise, steps, **kw)
        if callback is not None:
            callback(1, 1)
        return out


__all__ = ["DiTBaseline"]
