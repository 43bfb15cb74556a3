"""xAR: next-X autoregressive image generation with flow matching at every step (arXiv 2502.20388).

The image's latent grid (``KLTokenizer``, e.g. 16 x 8 x 8) is cut into *entities* by
``mmtok.tokenizers.entities`` -- a token, a k x k cell, a subsample, a scale or the whole image --
and generated one entity at a time. One transformer does everything: it is the flow-matching
velocity network of the entity being generated (no separate head), conditioned per entity through
adaLN on ``condition + that entity's own flow time``, with a block-causal mask (full attention
inside an entity, causal across entities).

Training (noisy context learning): every entity draws its own time ``t ~ logit-normal``, the whole
noisy sequence goes through the network at once, and the loss is the velocity MSE on every token:
the model never sees clean context, which is what makes it robust to its own sampling errors.
``context="clean"`` is plain teacher forcing instead (clean context tokens as a prefix of the noisy
ones, with the matching mask), kept to measure exposure bias.

Sampling: entity by entity from noise with Euler or Euler-Maruyama; finished entities enter as clean
context (``t = 0``) through a KV cache, so each flow step runs only the current entity's tokens.
Classifier-free guidance runs the conditional and null conditions in one doubled batch, with the
scale ramped linearly over entities (xAR's schedule) or constant.

Conditioning: a class label (digits) or a text prompt (shapes). Text goes through mmtok's shared
CLIP BPE ``TextTokenizer`` and a small transformer encoder; image tokens cross-attend to all text
tokens in every block (a pooled text vector alone does not bind each colour to its shape), and the
pooled text vector is added to the adaLN condition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import SwiGLU
from torch import nn

from ..errors import InputError
from ..hub import MmtokModel, register_model
from ..nn.attention import CrossAttention, KVCache, SelfAttention
from ..nn.flow import SAMPLERS, interpolate, logit_normal_times
from ..nn.text import TextEncoder
from ..tokenizers.entities import make_entities
from ..tokenizers.text import TextTokenizer
from .common import check_sample_args, validation_loss
from .parser import PromptParser

CFG_SCHEDULES = ("linear", "constant")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times in [0, 1] (scaled by 1000, as DiT/xAR do)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Condition:
    """A batch's encoded condition: ``vec`` (B x D, goes into adaLN) and, for text, the tokens the
    image cross-attends to (``tokens`` B x T x D, ``mask`` B x T) with per-block projected K/V; for
    the layout encoder also ``layout`` (B x S x D: one feature per scene slot, which the generator
    adds to the image tokens that cover that slot)."""

    def __init__(self, vec, tokens=None, mask=None, layout=None):
        self.vec, self.tokens, self.mask, self.layout = vec, tokens, mask, layout
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def cat(self, other: Condition) -> Condition:
        def join(a, b):
            return None if a is None else torch.cat([a, b])

        return Condition(join(self.vec, other.vec), join(self.tokens, other.tokens),
                         join(self.mask, other.mask), join(self.layout, other.layout))  # fmt: skip


class Conditioned:
    """Class or text conditions, shared by the generators (XAR, ECAR, ELM): a class embedding (index
    ``num_classes`` is the null class) or the shared ``TextEncoder`` (the empty prompt is null)."""

    pooled_text = True  # add the mean-pooled prompt vector to adaLN (XAR(pooled_text=False) turns it off)
    text_encoder = "tokens"

    def _init_condition(
        self, dim, heads, condition, num_classes, text_length, text_dim, text_layers, parser=None
    ) -> None:
        if condition not in ("text", "class"):
            raise ValueError(f"condition must be text or class, got {condition!r}")
        self.condition, self.num_classes, self.text_length = condition, num_classes, text_length
        if condition == "class":
            self.class_embed = nn.Embedding(num_classes + 1, dim)
        elif self.text_encoder == "slots":
            self._init_layout(dim, text_length, parser or {})
        else:
            tokenizer = TextTokenizer.clip(context_length=text_length)
            self.text = TextEncoder(tokenizer, dim, heads, text_dim, text_layers)

    def _init_layout(self, dim: int, text_length: int, parser: dict) -> None:
        """The layout prompt encoder: a frozen ``PromptParser`` (trained on its own, loaded through
        ``model.init_parts``) whose per-slot probabilities are embedded additively -- shape, colour
        and size each through its own table, plus the slot's own embedding -- so a held-out
        combination (a red star) is the sum of parts the generator has seen."""
        self.text = PromptParser(**{"length": text_length, **parser})
        self.text.requires_grad_(False)
        self.slot_embed = nn.ModuleDict(
            {k: nn.Linear(n, dim, bias=False) for k, n in self.text.slot_heads.items()}
        )
        self.global_embed = nn.ModuleDict(
            {k: nn.Linear(n, dim, bias=False) for k, n in self.text.global_heads.items()}
        )
        self.slot_pos = nn.Parameter(torch.randn(self.text.slots, dim) * 0.02)
        self.null_slots = nn.Parameter(torch.randn(self.text.slots, dim) * 0.02)  # the null prompt
        self.null_vec = nn.Parameter(torch.zeros(dim))

    def _encode_layout(self, prompts: list[str], labels: dict[str, torch.Tensor] | None = None) -> Condition:
        """Prompts -> the parser's per-slot probabilities -> slot features; ``labels`` (training, with
        ``train_layout="labels"``) gives the scene's own layout as one-hot probabilities instead."""
        if labels is None:
            self.text.eval()  # frozen: no dropout, no statistics to update
            with torch.no_grad():
                probs = self.text.probabilities(prompts)
        else:
            probs = {k: F.one_hot(labels[k].long(), n).float() for k, n in
                     {**self.text.slot_heads, **self.text.global_heads}.items()}  # fmt: skip
        slots = self.slot_pos + sum(self.slot_embed[k](probs[k]) for k in self.slot_embed)
        vec = slots.mean(1) + sum(self.global_embed[k](probs[k]) for k in self.global_embed)
        null = torch.tensor([p == "" for p in prompts], device=slots.device)
        slots = torch.where(null[:, None, None], self.null_slots.expand_as(slots), slots)
        vec = torch.where(null[:, None], self.null_vec.expand_as(vec), vec)
        mask = torch.ones(slots.shape[:2], dtype=torch.bool, device=slots.device)
        return Condition(vec, slots, mask, layout=slots)

    def encode_condition(self, cond: Any, device: torch.device | None = None) -> Condition:
        """Prompts (list of str; "" = the null prompt) or class labels (ints; ``num_classes`` =
        null) -> ``Condition``."""
        device = device or self.pos.device
        if self.condition == "class":
            labels = torch.as_tensor(cond, dtype=torch.long, device=device).reshape(-1)
            if ((labels < 0) | (labels > self.num_classes)).any():
                raise InputError(f"class labels must be in [0, {self.num_classes}], got {labels.tolist()}")
            return Condition(self.class_embed(labels))
        if self.text_encoder == "slots":
            return self._encode_layout([cond] if isinstance(cond, str) else list(cond))
        tokens, mask, pooled = self.text(list(cond) if not isinstance(cond, str) else cond)
        if not self.pooled_text:
            # No bag-of-words shortcut into adaLN: every word reaches the image only through
            # cross-attention, where it can be bound to the tokens (places) that attend to it.
            pooled = torch.zeros_like(pooled)
        return Condition(pooled, tokens, mask)

    def null_condition(self, n: int) -> Any:
        return [""] * n if self.condition == "text" else [self.num_classes] * n

    def guided_condition(self, cond: list[Any], guided: bool) -> Condition:
        """The batch's condition, followed by as many null conditions when guidance doubles the batch."""
        c = self.encode_condition(cond, self.pos.device)
        return c.cat(self.encode_condition(self.null_condition(len(cond)), self.pos.device)) if guided else c

    def dropped_condition(self, batch: dict[str, Any], n: int) -> Condition:
        """Training conditions with probability ``label_drop`` replaced by the null one (what CFG needs)."""
        cond_in = batch["caption"] if self.condition == "text" else batch["label"]
        drop = torch.rand(n) < self.label_drop
        null = self.null_condition(n)
        cond_in = [null[i] if drop[i] else c for i, c in enumerate(list(cond_in))]
        if self.condition == "text" and self.text_encoder == "slots" and self.train_layout == "labels":
            return self._encode_layout(cond_in, self._scene_labels(batch))
        return self.encode_condition(cond_in, self.pos.device)

    def _scene_labels(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The training scenes' own layouts (the labels the parser is trained to read from the caption)."""
        return self.text.targets(batch)


class Block(nn.Module):
    """RMSNorm (no affine) -> self-attention -> [cross-attention to text] -> SwiGLU, each with
    per-token adaLN shift/scale/gate (zero-initialised gates: every block starts as identity)."""

    def __init__(self, dim: int, heads: int, layer: int, cross: bool, mlp_ratio: float):
        super().__init__()
        self.norm = nn.RMSNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, heads, layer)
        self.cross = CrossAttention(dim, heads) if cross else None
        self.mlp = SwiGLU(dim, int(dim * mlp_ratio))
        self.parts = 3 if cross else 2
        self.ada = nn.Linear(dim, 3 * self.parts * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c, token_entity, mask, cache, cond: Condition, layer: int):
        mods = self.ada(c)[:, token_entity].chunk(3 * self.parts, dim=-1)  # per-entity -> per-token
        x = x + mods[2] * self.attn(_modulate(self.norm(x), mods[0], mods[1]), mask, cache)
        if self.cross is not None:
            if layer not in cond.kv:  # the condition is fixed while sampling: project it once
                cond.kv[layer] = self.cross.project_kv(cond.tokens)
            h = _modulate(self.norm(x), mods[3], mods[4])
            x = x + mods[5] * self.cross(h, cond.kv[layer], cond.mask)
        return x + mods[-1] * self.mlp(_modulate(self.norm(x), mods[-3], mods[-2]))


@register_model
class XAR(Conditioned, MmtokModel):
    """xAR next-X flow-matching generator over KL-tokenizer latents (text- or class-conditional).

    Args:
        tokenizer: name of the KL tokenizer whose latents this model generates (for decoding).
        latent_channels: channels of those latents.
        grid: latent grid side (8 for 64x64 images at f=8).
        entity: ``token``, ``cell``, ``subsample``, ``scale`` or ``image``.
        entity_size: the entity's size parameter (``make_entities``; None = its default).
        dim, depth, heads, mlp_ratio: the transformer.
        condition: ``text`` or ``class``.
        num_classes: classes for ``class`` conditioning (index ``num_classes`` is the null class).
        text_length: CLIP context length of prompts (longer prompts are refused).
        text_dim: width of the text token embedding (projected to ``dim``; small, the vocab is 49k).
        text_layers: transformer layers of the text encoder.
        pooled_text: also add the prompt's mean-pooled text vector to every block's adaLN condition
            (True, the default); False leaves cross-attention as the text's only way in.
        text_encoder: ``tokens`` (a small transformer trained with the generator; the image
            cross-attends to every word) or ``slots`` (the layout encoder: a frozen ``PromptParser``
            says what each slot of the scene holds; each slot's feature is added to the image tokens
            that cover the slot and cross-attended to, so binding a colour to its place is given,
            not learnt through the flow loss).
        parser: ``PromptParser`` kwargs for ``text_encoder="slots"``.
        train_layout: what the slot features come from in training: ``labels`` (the training scene's
            own layout, one-hot; the parser trains on its own and only reads prompts at sampling
            time, so the generator never learns a half-trained parser's mistakes) or ``parser``.
        patch: latent patch side per token (2: an 8 x 8 latent of C channels becomes 4 x 4 tokens of
            4C; a quarter of the tokens, so about 4x cheaper per image).
        freeze_text: keep the text encoder's weights fixed in training (e.g. one pretrained to parse
            the prompts, loaded through the config's ``model.init_parts``).
        label_drop: probability of training with the null condition (for CFG).
        context: ``noisy`` (noisy context learning) or ``clean`` (teacher forcing).
        t_mean, t_std: logit-normal training times.
    """

    task = "image-generator"

    def __init__(
        self,
        tokenizer: str = "kl-f8-64",
        latent_channels: int = 16,
        grid: int = 8,
        entity: str = "cell",
        entity_size: Any = None,
        dim: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 8 / 3,
        condition: str = "text",
        num_classes: int = 10,
        text_length: int = 32,
        text_dim: int = 64,
        text_layers: int = 2,
        label_drop: float = 0.1,
        context: str = "noisy",
        t_mean: float = 0.0,
        t_std: float = 1.0,
        pooled_text: bool = True,
        freeze_text: bool = False,
        text_encoder: str = "tokens",
        parser: dict | None = None,
        train_layout: str = "labels",
        patch: int = 1,
    ):
        super().__init__()
        self.pooled_text, self.freeze_text = bool(pooled_text), bool(freeze_text)
        if context not in ("noisy", "clean"):
            raise ValueError(f"context must be noisy or clean, got {context!r}")
        if text_encoder not in ("tokens", "slots"):
            raise ValueError(f"text_encoder must be tokens or slots, got {text_encoder!r}")
        if patch < 1 or grid % patch:
            raise ValueError(f"patch must divide the grid ({grid}), got {patch}")
        if train_layout not in ("labels", "parser"):
            raise ValueError(f"train_layout must be labels or parser, got {train_layout!r}")
        self.text_encoder, self.patch, self.train_layout = text_encoder, patch, train_layout
        self.tokenizer_name, self.latent_channels, self.grid = tokenizer, latent_channels, grid
        self.entities = make_entities(entity, (grid // patch, grid // patch), entity_size)
        self.label_drop, self.context, self.t_mean, self.t_std = label_drop, context, t_mean, t_std
        L, self.token_channels = self.entities.seq_len, latent_channels * patch * patch
        self.proj_in = nn.Linear(self.token_channels, dim)
        self.pos = nn.Parameter(torch.randn(L, dim) * 0.02)
        self.t_embed = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self._init_condition(dim, heads, condition, num_classes, text_length, text_dim, text_layers, parser)
        if condition == "text" and text_encoder == "slots":
            self.register_buffer(
                "layout_weights", _slot_overlap(self.entities, self.text.slots), persistent=False
            )
        if self.freeze_text and condition == "text":
            self.text.requires_grad_(False)  # the trainer optimises only parameters that need grads
        self.blocks = nn.ModuleList(
            Block(dim, heads, i, condition == "text", mlp_ratio) for i in range(depth)
        )
        self.final_norm = nn.RMSNorm(dim, elementwise_affine=False)
        self.final_ada = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, self.token_channels)
        for layer in (self.final_ada, self.proj_out):  # start by predicting zero velocity
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- the network ----------------------------------------------------------------------------

    def _run(self, x, t, token_entity, positions, cond: Condition, mask=None, cache=None) -> torch.Tensor:
        """Velocity for tokens ``x`` (B x L x C) at sequence ``positions`` (L); ``t`` holds one time
        per entity present (B x E) and ``token_entity`` (L) says which column each token uses."""
        h = self.proj_in(x) + self.pos[positions]
        if cond.layout is not None:  # each token gets the features of the slots it covers, by area
            h = h + torch.einsum(
                "ls,bsd->bld", self.layout_weights[positions].to(h.dtype), cond.layout.to(h.dtype)
            )
        c = F.silu(cond.vec[:, None] + self.t_embed(timestep_embedding(t, 256)))  # B x E x D
        for i, block in enumerate(self.blocks):
            h = block(h, c, token_entity, mask, cache, cond, i)
        shift, scale = self.final_ada(c)[:, token_entity].chunk(2, dim=-1)
        return self.proj_out(_modulate(self.final_norm(h), shift, scale))

    # -- training -------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        latent = batch["latent"].float()
        ents, B = self.entities, latent.shape[0]
        x0 = ents.group(self._patchify(latent))  # B x L x C in entity order
        ids = ents.entity_ids.to(latent.device)
        t = logit_normal_times((B, ents.num_entities), self.t_mean, self.t_std, device=latent.device)
        noise = torch.randn_like(x0)
        xt = interpolate(x0, noise, t[:, ids, None])
        cond = self.dropped_condition(batch, B)
        positions = torch.arange(ents.seq_len, device=latent.device)
        if self.context == "noisy":
            mask = ents.block_causal_mask().to(latent.device)
            pred = self._run(xt, t, ids, positions, cond, mask)
        else:  # teacher forcing: [clean context ; noisy queries], noisy entity e sees clean < e
            mask = _teacher_forcing_mask(ids).to(latent.device)
            zeros = torch.zeros_like(t)
            pred = self._run(
                torch.cat([x0, xt], 1), torch.cat([zeros, t], 1), torch.cat([ids, ids + ents.num_entities]),
                torch.cat([positions, positions]), cond, mask,
            )[:, ents.seq_len :]  # fmt: skip
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        return loss, {"mse": loss.detach()}

    def evaluate(self, dataset, device: str | torch.device = "cpu", batch_size: int = 64) -> dict[str, float]:
        """Validation flow loss at a fixed seed (sample quality: ``mmtok eval generation``)."""
        return validation_loss(self, dataset, device, batch_size)

    # -- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        cond: Any,
        steps: int = 20,
        cfg: float = 3.0,
        cfg_schedule: str = "linear",
        sampler: str = "euler_maruyama",
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Latents (B x C x grid x grid, the tokenizer's scaled space) for prompts or class labels.

        Args:
            cond: list of prompts (text) or class labels.
            steps: network evaluations per entity.
            cfg: guidance scale (1 = no guidance: no doubled batch).
            cfg_schedule: ``linear`` (1 on the first entity up to ``cfg`` on the last) or ``constant``.
            sampler: ``euler`` or ``euler_maruyama``.
            generator: CPU torch generator: same seed, same images.
            kv_cache: reuse finished entities' keys/values (off: recompute the prefix every step).
            callback: ``callback(entities_done, entities_total)`` after each entity (progress bars).
        """
        cond = check_sample_args(self, cond, steps, cfg, sampler)
        if cfg_schedule not in CFG_SCHEDULES:
            raise InputError(f"cfg_schedule must be linear or constant, got {cfg_schedule!r}")
        device, ents, B = self.pos.device, self.entities, len(cond)
        guided = cfg != 1.0
        c = self.guided_condition(cond, guided)
        E, C = ents.num_entities, self.token_channels
        out = torch.zeros(B, ents.seq_len, C, device=device)
        cache = KVCache(capacity=ents.seq_len) if kv_cache else None
        slices = ents.entity_slices()
        for e, sl in enumerate(slices):
            scale = cfg if cfg_schedule == "constant" or E == 1 else 1 + (cfg - 1) * e / (E - 1)
            if cache is not None and e > 0:  # the entity just finished joins the cache, clean (t = 0)
                self._cache_entity(cache, c, out[:, slices[e - 1]], slices[e - 1], 0.0, guided)
            velocity = self._entity_velocity(c, e, sl, out, cache, guided, scale)
            noise = torch.randn(B, sl.stop - sl.start, C, generator=generator).to(device)
            kw = {"generator": generator} if sampler == "euler_maruyama" else {}
            out[:, sl] = SAMPLERS[sampler](velocity, noise, steps, **kw)
            if callback is not None:
                callback(e + 1, E)
        return self._unpatchify(ents.ungroup(out))

    def _patchify(self, latent: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(latent, self.patch) if self.patch > 1 else latent

    def _unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(tokens, self.patch) if self.patch > 1 else tokens

    def _cache_entity(self, cache: KVCache, c: Condition, tokens, sl: slice, t: float, guided: bool) -> None:
        """Append a finished entity's keys/values (its tokens at flow time ``t``) to ``cache``."""
        ctx = tokens.repeat(2 if guided else 1, 1, 1)
        cache.writing = True
        self._run(ctx, torch.full((len(ctx), 1), t, device=ctx.device), _zeros(ctx.shape[1], ctx.device),
                  torch.arange(sl.start, sl.stop, device=ctx.device), c, None, cache)  # fmt: skip
        cache.writing = False

    def _entity_velocity(self, c, e, sl, out, cache, guided, scale):
        device, ents = self.pos.device, self.entities
        n = sl.stop - sl.start

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            xin = x.repeat(2, 1, 1) if guided else x
            bt = torch.full((len(xin), 1), t, device=device)
            if cache is not None:
                pos = torch.arange(sl.start, sl.stop, device=device)
                v = self._run(xin, bt, _zeros(n, device), pos, c, None, cache)
            else:  # no cache: the clean prefix and this entity, block-causal, every step
                prefix = out[:, : sl.start].repeat(2 if guided else 1, 1, 1)
                seq = torch.cat([prefix, xin], 1)
                ids = ents.entity_ids[: sl.stop].to(device)
                times = torch.cat([torch.zeros(len(xin), e, device=device), bt], 1)
                mask = ents.block_causal_mask()[: sl.stop, : sl.stop].to(device)
                v = self._run(seq, times, ids, torch.arange(sl.stop, device=device), c, mask)[:, sl.start :]
            if not guided:
                return v
            v_c, v_u = v.chunk(2)
            return v_u + scale * (v_c - v_u)

        return velocity


def _slot_overlap(ents, slots: int) -> torch.Tensor:
    """L x slots: the share of each token's area (in entity order) inside each slot of the scene's
    n x n grid (slots = n * n, row-major; the shapes test bed's 3 x 3)."""
    n = math.isqrt(slots)
    if n * n != slots:
        raise ValueError(f"the layout encoder needs a square slot grid, got {slots} slots")
    H, W = ents.grid

    def share(cells: int) -> torch.Tensor:  # cells x n: overlap of [i/cells, (i+1)/cells) with [k/n, ...)
        i, k = torch.arange(cells)[:, None].double(), torch.arange(n)[None].double()
        lo = torch.maximum(i / cells, k / n)
        hi = torch.minimum((i + 1) / cells, (k + 1) / n)
        return (hi - lo).clamp(min=0) * cells

    area = torch.einsum("hr,wc->rchw", share(H), share(W)).reshape(1, slots, H, W)
    return ents.group(area.float())[0]  # coarser entities (scale) get their area averages


def _zeros(n: int, device) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long, device=device)


def _teacher_forcing_mask(ids: torch.Tensor) -> torch.Tensor:
    """2L x 2L mask over [clean ; noisy]: clean tokens are block-causal among themselves; a noisy
    token of entity e sees clean tokens of entities < e and noisy tokens of entity e."""
    same_or_before = ids[:, None] >= ids[None, :]
    before = ids[:, None] > ids[None, :]
    same = ids[:, None] == ids[None, :]
    nothing = torch.zeros_like(same)
    top = torch.cat([same_or_before, nothing], 1)
    bottom = torch.cat([before, same], 1)
    return torch.cat([top, bottom], 0)


__all__ = ["XAR", "Conditioned", "timestep_embedding"]
