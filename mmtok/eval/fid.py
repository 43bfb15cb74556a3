"""Fréchet distance between two sets of features (the FID formula, on whatever features are given).

mmtok computes it on its judges' features ("judge-FID"): Inception is not available offline and is
meaningless on 64x64 procedural scenes, while a judge trained on the test bed knows what matters there.
"""

from __future__ import annotations

import numpy as np
import torch


def _sqrtm(m: np.ndarray) -> np.ndarray:
    from scipy import linalg  # here, not at the top: the CLI imports the harnesses on every start

    # Plain call: scipy >= 1.18 dropped the ``disp`` flag (older ones return just the matrix too).
    out = linalg.sqrtm(m)
    return out[0] if isinstance(out, tuple) else out


def frechet_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` for N x D feature matrices."""
    a = np.asarray(a.detach().cpu() if torch.is_tensor(a) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if torch.is_tensor(b) else b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two N x D feature matrices with N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = _sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Near-singular product (few samples for the dimension): regularise, as the reference FID does.
        eps = np.eye(a.shape[1]) * 1e-6
        covmean = _sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
