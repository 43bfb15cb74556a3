"""ECAR: multistage continuous autoregression with a partially denoising flow per stage.

E-CAR (arXiv 2412.14170) is known from its abstract only (no code is public): a hierarchical AR
transformer emits continuous token maps of increasing resolution, tokens inside a stage in parallel,
and a "multistage flow" denoises only part of the way in each stage instead of running a full flow
per stage. This file is our design of that idea, on the same latents, transformer and samplers as
xAR (``ECAR`` subclasses ``XAR``: blocks, adaLN, text cross-attention, CFG and KV cache are shared).

Stages and time windows. The latent (e.g. 16 x 8 x 8) is seen as a pyramid of S area-downsampled
maps ``x0_1 .. x0_S`` (``stages``, e.g. 2x2, 4x4, 8x8). The flow time [1, 0] is cut at
``1 = T_0 > T_1 > ... > T_S = 0`` (``stage_times`` = T_1..T_{S-1}); stage s lives at resolution
r_s and integrates only its window [T_{s-1}, T_s]:

    end_s   = (1 - T_s) x0_s + T_s eps_s                       (stage s's map, partly noisy)
    start_1 = eps_1                                            (pure noise, coarsest map)
    start_s = up(end_{s-1}) + T_{s-1} zeta_s                   (s > 1: the previous stage's result,
                                                                upsampled, plus fresh detail noise)
    eps_s   = up(eps_{s-1}) / f + zeta_s                       (f = r_s / r_{s-1}; up = nearest)

``zeta_s`` is Gaussian noise with zero mean inside every f x f block (``detail_noise``), variance
1 - 1/f^2 per element; then eps_s is again i.i.d. N(0, 1), so every stage ends on the usual noisy
marginal of its own resolution, and the same ``zeta_s`` that starts a stage is the one its end
carries, which keeps the start -> end line short. The network predicts the velocity
``start_s - end_s`` along ``x = (1 - u) end_s + u start_s``, u in [0, 1], told the global time
``t = T_s + u (T_{s-1} - T_s)`` through adaLN; sampling integrates u from 1 to 0 with Euler.

Autoregression over stages. Stage s attends to the finished maps of stages < s (block-causal mask
over the concatenated pyramid, KV cache while sampling; earlier maps enter at their end time T_s,
as xAR's finished entities enter at t = 0), and training is xAR's noisy context learning: one pass
over all stages, each at its own random u. Network evaluations per image = sum of the stages' steps
(e.g. 3 x 6 = 18), each on only r_s^2 tokens (plus the cached context), against xAR's
entities x steps (4 x 20 = 80 for cells).

Relation to the abstract: "continuous token maps at increasing resolution" = the pyramid; "tokens in
a stage in parallel" = one entity per stage; "multistage flow-based distribution modelling that
denoises part of the way per stage" = the time windows; the jump between stages (upsample + detail
noise) is the pyramidal-flow renoising the summaries mention, in a form whose marginals we can state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..hub import register_model
from ..nn.attention import KVCache
from ..nn.flow import euler_sample, logit_normal_times
from ..tokenizers.entities import downsample
from .common import check_sample_args
from .xar import CFG_SCHEDULES, XAR


def up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest upsampling of B x C x h x w by an integer factor."""
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def detail_noise(shape, factor: int, generator=None, device=None) -> torch.Tensor:
    """Gaussian noise with zero mean in every ``factor x factor`` block (variance 1 - 1/factor^2)."""
    xi = (
        torch.randn(shape, generator=generator).to(device)
        if generator is not None
        else torch.randn(shape, device=device)
    )
    return xi - up(F.avg_pool2d(xi, factor), factor)


@register_model
class ECAR(XAR):
    """Multistage continuous AR generator (see the module docstring) over KL-tokenizer latents.

    Args (beyond ``XAR``'s, whose ``entity`` is fixed to ``scale``):
        stages: map sides, coarse to fine; each divides the next, the last is ``grid``.
        stage_times: the S - 1 window boundaries T_1 > ... > T_{S-1} inside (0, 1).
    """

    default_sampler = "euler"

    def __init__(
        self,
        tokenizer: str = "kl-f8-64",
        latent_channels: int = 16,
        grid: int = 8,
        stages: tuple[int, ...] | list[int] = (2, 4, 8),
        stage_times: tuple[float, ...] | list[float] = (0.75, 0.4),
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
        t_mean: float = 0.0,
        t_std: float = 1.0,
    ):
        stages = tuple(int(s) for s in stages)
        times = tuple(float(t) for t in stage_times)
        if not stages or stages[-1] != grid or any(b % a for a, b in zip(stages, stages[1:], strict=False)):
            raise ValueError(f"stages must grow by integer factors up to the grid {grid}, got {list(stages)}")
        if (
            len(times) != len(stages) - 1
            or any(not 0 < t < 1 for t in times)
            or list(times) != sorted(times, reverse=True)
        ):
            raise ValueError(
                f"stage_times must be {len(stages) - 1} decreasing values in (0, 1), got {times}"
            )
        super().__init__(
            tokenizer=tokenizer, latent_channels=latent_channels, grid=grid, entity="scale",
            entity_size=list(stages), dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
            condition=condition, num_classes=num_classes, text_length=text_length, text_dim=text_dim,
            text_layers=text_layers, label_drop=label_drop, context="noisy", t_mean=t_mean, t_std=t_std,
        )  # fmt: skip
        self.stages = stages
        self.bounds = (1.0, *times, 0.0)  # T_0 .. T_S

    def factor(self, s: int) -> int:
        return self.stages[s] // self.stages[s - 1]

    def global_time(self, s: int, u: torch.Tensor) -> torch.Tensor:
        hi, lo = self.bounds[s], self.bounds[s + 1]
        return lo + u * (hi - lo)

    # -- training -------------------------------------------------------------------------------

    def pairs(self, latent: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(start_s, end_s) maps, B x C x r_s x r_s, for every stage of a batch of latents."""
        B, C = latent.shape[:2]
        maps = [downsample(latent, (r, r)) for r in self.stages]
        T = self.bounds
        eps = torch.randn_like(maps[0])
        out, prev_end = [], None
        for s, x0 in enumerate(maps):
            if s == 0:
                start = eps
            else:
                f = self.factor(s)
                zeta = detail_noise(x0.shape, f, device=latent.device)
                eps = up(eps, f) / f + zeta
                start = up(prev_end, f) + T[s] * zeta
            end = (1 - T[s + 1]) * x0 + T[s + 1] * eps
            out.append((start, end))
            prev_end = end
        return out

    def training_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        latent = batch["latent"].float()
        ents, B, S = self.entities, latent.shape[0], len(self.stages)
        u = logit_normal_times((B, S), self.t_mean, self.t_std, device=latent.device)
        xs, targets = [], []
        for s, (start, end) in enumerate(self.pairs(latent)):
            us = u[:, s, None, None, None]
            xs.append(((1 - us) * end + us * start).flatten(2))
            targets.append((start - end).flatten(2))
        x = torch.cat(xs, 2).transpose(1, 2)  # B x L x C, the pyramid coarse to fine
        target = torch.cat(targets, 2).transpose(1, 2)
        t = torch.stack([self.global_time(s, u[:, s]) for s in range(S)], 1)
        cond = self.dropped_condition(batch, B)
        ids = ents.entity_ids.to(latent.device)
        positions = torch.arange(ents.seq_len, device=latent.device)
        pred = self._run(x, t, ids, positions, cond, ents.block_causal_mask().to(latent.device))
        per_token = (pred.float() - target.float()).pow(2).mean(-1)  # B x L
        # Every stage weighs the same (the 8x8 stage has 16x the tokens of the 2x2 one).
        loss = torch.stack([per_token[:, sl].mean() for sl in ents.entity_slices()]).mean()
        return loss, {"mse": loss.detach()}

    # -- sampling -------------------------------------------------------------------------------

    def network_evaluations(self, steps: int) -> int:
        return steps * len(self.stages)

    @torch.no_grad()
    def sample(
        self,
        cond: Any,
        steps: int = 6,
        cfg: float = 3.0,
        cfg_schedule: str = "linear",
        sampler: str = "euler",
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Latents B x C x grid x grid: stage by stage, ``steps`` Euler steps inside each stage's window.

        Only ``sampler="euler"``: the stages start from the upsampled previous stage, not from
        Gaussian noise, so the Euler-Maruyama form of xAR (which assumes a Gaussian interpolant) does
        not apply.
        """
        cond = check_sample_args(self, cond, steps, cfg, "euler" if sampler is None else sampler)
        if sampler not in (None, "euler"):
            raise InputError(f"ECAR samples with the Euler ODE only (got sampler={sampler!r})")
        if cfg_schedule not in CFG_SCHEDULES:
            raise InputError(f"cfg_schedule must be linear or constant, got {cfg_schedule!r}")
        device, ents, B, C, S = (
            self.pos.device,
            self.entities,
            len(cond),
            self.latent_channels,
            len(self.stages),
        )
        guided = cfg != 1.0
        c = self.guided_condition(cond, guided)
        slices = ents.entity_slices()
        cache = KVCache(capacity=ents.seq_len) if kv_cache else None
        finished: list[torch.Tensor] = []  # B x r^2 x C end maps of the stages done
        end = None
        for s, r in enumerate(self.stages):
            scale = cfg if cfg_schedule == "constant" or S == 1 else 1 + (cfg - 1) * s / (S - 1)
            if s == 0:
                x = torch.randn(B, C, r, r, generator=generator).to(device)
            else:
                f = self.factor(s)
                x = up(end, f) + self.bounds[s] * detail_noise((B, C, r, r), f, generator, device)
                if cache is not None:  # the finished stage joins the cache at its end time
                    self._cache_entity(cache, c, finished[-1], slices[s - 1], self.bounds[s], guided)
            velocity = self._stage_velocity(c, s, finished, cache, guided, scale)
            seq = euler_sample(velocity, x.flatten(2).transpose(1, 2), steps)  # u: 1 -> 0
            finished.append(seq)
            end = seq.transpose(1, 2).unflatten(2, (r, r))
            if callback is not None:
                callback(s + 1, S)
        return end

    def _stage_velocity(self, c, s, finished, cache, guided, scale):
        device, ents = self.pos.device, self.entities
        sl = ents.entity_slices()[s]
        n = sl.stop - sl.start

        def velocity(x: torch.Tensor, u: float) -> torch.Tensor:
            xin = x.repeat(2, 1, 1) if guided else x
            t = float(self.global_time(s, torch.tensor(u)))
            bt = torch.full((len(xin), 1), t, device=device)
            if cache is not None:
                v = self._run(xin, bt, _zeros(n, device), torch.arange(sl.start, sl.stop, device=device), c,
                              None, cache)  # fmt: skip
            else:  # no cache: the finished stages (at their end times) and this one, every step
                prefix = [f.repeat(2 if guided else 1, 1, 1) for f in finished]
                seq = torch.cat([*prefix, xin], 1)
                ends = [self.bounds[k + 1] for k in range(s)]
                times = torch.tensor([*ends, t], device=device).expand(len(xin), s + 1)
                mask = ents.block_causal_mask()[: sl.stop, : sl.stop].to(device)
                ids = ents.entity_ids[: sl.stop].to(device)
                v = self._run(seq, times, ids, torch.arange(sl.stop, device=device), c, mask)[:, sl.start :]
            if not guided:
                return v
            v_c, v_u = v.chunk(2)
            return v_u + scale * (v_c - v_u)

        return velocity


def _zeros(n: int, device) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long, device=device)


__all__ = ["ECAR", "detail_noise", "up"]
