"""What every flow generator (xAR, the DiT baseline) shares outside its network: argument checks of
``sample`` and the validation loss the trainer logs."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..nn.flow import SAMPLERS


def check_sample_args(model, cond: Any, steps: int, cfg: float, sampler: str) -> list[Any]:
    """Validate ``sample``'s arguments (one-line ``InputError``s); returns the conditions as a list."""
    if sampler not in SAMPLERS:
        raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if steps < 1 or not math.isfinite(cfg) or cfg < 0:
        raise InputError(f"need steps >= 1 and a finite cfg >= 0, got steps={steps}, cfg={cfg}")
    if isinstance(cond, str):
        raise InputError("sample() expects a list of prompts (or class labels), got one string")
    cond = cond.tolist() if torch.is_tensor(cond) else list(cond)
    if not cond:
        raise InputError("nothing to sample: give at least one prompt or class label")
    k = model.num_classes
    if model.condition == "class" and any(not isinstance(c, int) or not 0 <= c < k for c in cond):
        raise InputError(f"class labels must be integers in [0, {k - 1}], got {cond}")
    return cond


@torch.no_grad()
def validation_loss(model, dataset, device, batch_size: int = 64) -> dict[str, float]:
    """Mean of every figure ``model.training_step`` logs (``val_<name>``, weighted by batch size) over
    ``dataset`` at a fixed seed (the global RNG is restored afterwards): a cheap progress signal for
    any generator (flow MSE, or cross-entropy and token accuracy); sample quality is ``mmtok eval
    generation``."""
    was = model.training
    model.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        totals: dict[str, float] = {}
        n = 0
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            _, logs = model.training_step(batch)
            b = len(next(v for v in batch.values() if torch.is_tensor(v)))
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + float(value) * b
            n += b
        return {**{f"val_{k}": v / max(n, 1) for k, v in totals.items()}, "n": n}
    finally:
        torch.random.set_rng_state(state)
        model.train(was)
