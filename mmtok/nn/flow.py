"""Flow matching: the linear interpolant, its training times, and the samplers.

Convention (xAR / SiT): ``x_t = (1 - t) x_0 + t eps`` with ``t = 0`` data and ``t = 1`` noise; the
network predicts the velocity ``v = eps - x_0``; sampling integrates from ``t = 1`` down to 0.

Samplers take ``velocity(x, t) -> v`` (``t`` a float for the whole batch) so that the same code
serves xAR's per-entity loops, ECAR's partial intervals and the DiT baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def logit_normal_times(
    shape: tuple[int, ...],
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``sigmoid(N(mean, std))`` times in (0, 1): SD3's logit-normal, most mass at mid noise levels."""
    z = torch.randn(shape, generator=generator, device=device) * std + mean
    return torch.sigmoid(z)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(1 - t) x0 + t noise``; ``t`` broadcasts against ``x0`` (e.g. B x L x 1 per-token times)."""
    return (1 - t) * x0 + t * noise


def time_grid(steps: int, t_min: float = 0.0, t_max: float = 1.0) -> list[float]:
    """``steps + 1`` times from ``t_max`` down to ``t_min`` (linear), the Euler grid."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [t_max + (t_min - t_max) * i / steps for i in range(steps + 1)]


@torch.no_grad()
def euler_sample(velocity: Velocity, x: torch.Tensor, steps: int, t_max: float = 1.0, t_min: float = 0.0):
    """Deterministic Euler on the probability-flow ODE ``dx/dt = v`` from ``t_max`` to ``t_min``
    (``steps`` network evaluations). ``x`` is the state at ``t_max`` (pure noise when it is 1)."""
    grid = time_grid(steps, t_min, t_max)
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        x = x + (t_next - t) * velocity(x, t)
    return x


@torch.no_grad()
def euler_maruyama_sample(
    velocity: Velocity,
    x: torch.Tensor,
    steps: int,
    t_max: float = 1.0,
    t_min: float = 0.0,
    t_stop: float = 0.04,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Euler-Maruyama on the reverse SDE with diffusion ``w(t) = 2 t`` (xAR's sampler), ending with a
    deterministic Euler step: noise re-injected along the way corrects errors of earlier steps.

    With ``x_t = (1 - t) x_0 + t eps`` the score is ``-eps_hat / t`` where ``eps_hat = x + (1 - t) v``,
    so the drift ``v - w/2 * score`` is ``v + eps_hat``. The SDE runs from ``t_max`` to
    ``max(t_min, t_stop)`` in ``steps - 1`` steps; the last of the ``steps`` evaluations is a plain
    Euler step to ``t_min`` (no noise at the end).
    """
    if steps < 2:
        return euler_sample(velocity, x, steps, t_max, t_min)
    end = max(t_min, min(t_stop, t_max))
    grid = time_grid(steps - 1, end, t_max)
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        v = velocity(x, t)
        h = t - t_next
        eps_hat = x + (1 - t) * v
        # Drawn where the generator lives (a CPU generator gives the same images on any device).
        where = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=where).to(x)
        x = x - h * (v + eps_hat) + math.sqrt(2 * t * h) * noise
    return x + (t_min - end) * velocity(x, end)


SAMPLERS = {"euler": euler_sample, "euler_maruyama": euler_maruyama_sample}


__all__ = [
    "SAMPLERS",
    "euler_maruyama_sample",
    "euler_sample",
    "interpolate",
    "logit_normal_times",
    "time_grid",
]
