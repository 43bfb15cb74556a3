"""Synthetic documents: pages of glyph blocks at known ink density, for TCC's density estimate.

A page is a grid of ``rows x cols`` cells of ``crop`` pixels (default 3 x 4 cells of 64 px: a 192 x 256
page, larger than the tower's 64 x 64 input, so it needs the multi-crop form). Each cell holds a block
of text lines in PIL's built-in font (nothing downloads): its fill level -- how many lines, how long,
what font size -- is drawn at random per cell, from blank margins to dense paragraphs. The ground
truth is measured, not assumed: a cell's **ink density** is the share of its pixels darker than
mid-grey. ``density_correlation`` runs TCC's multi-crop encoder on every page and returns the Spearman
correlation between the estimated information density of each sub-image and its true ink density.

    pages = make_pages(20, seed=1)          # list of Page(image [3, H, W] in [-1, 1], ink [cells], layout)
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .tcc import TCC, encode_multicrop

GLYPHS = string.ascii_letters + string.digits + ".,;:-()"
PAPER, INK = 245, 20


@dataclass
class Page:
    image: torch.Tensor  # [3, H, W] in [-1, 1]
    ink: np.ndarray  # [rows * cols] ink density of each cell (share of dark pixels), row-major
    layout: tuple[int, int]


def _cell(rng: np.random.Generator, crop: int) -> np.ndarray:
    cell = Image.new("L", (crop, crop), PAPER)
    level = rng.uniform(0, 1) if rng.uniform() > 0.15 else 0.0  # some blank cells (margins)
    if level > 0:
        draw = ImageDraw.Draw(cell)
        size = int(rng.integers(8, 13))
        font = ImageFont.load_default(size=size)
        line = size + int(rng.integers(1, 4))
        n_lines = max(1, round(level * (crop - 4) / line))
        for i in range(n_lines):
            chars = max(1, round(level * rng.uniform(0.6, 1.0) * crop / (0.6 * size)))
            text = "".join(rng.choice(list(GLYPHS), size=chars))
            draw.text((2, 2 + i * line), text, fill=INK, font=font)
    return np.asarray(cell)


def make_page(seed: int, rows: int = 3, cols: int = 4, crop: int = 64) -> Page:
    """One page (deterministic by ``seed``)."""
    rng = np.random.default_rng(seed)
    cells = [[_cell(rng, crop) for _ in range(cols)] for _ in range(rows)]
    grey = np.block(cells).astype(np.uint8)
    ink = np.array([(c < 128).mean() for row in cells for c in row])
    image = torch.from_numpy(grey).float().div(127.5).sub(1.0)[None].expand(3, -1, -1).contiguous()
    return Page(image, ink, (rows, cols))


def make_pages(n: int, seed: int = 0, rows: int = 3, cols: int = 4, crop: int = 64) -> list[Page]:
    return [make_page(seed * 100_003 + i, rows, cols, crop) for i in range(n)]


@torch.no_grad()
def density_correlation(runner, pages: list[Page], keep: float = 0.5, tcc=None, crop: int = 64) -> dict:
    """Spearman (scipy) between TCC's per-crop density and the true ink density over all sub-images of
    ``pages``; also the median per-page correlation and the budget share each crop received."""
    from scipy.stats import spearmanr

    tcc = tcc or TCC()
    est, truth, counts, per_page = [], [], [], []
    for page in pages:
        out = encode_multicrop(runner, page.image, keep, crop=crop, tcc=tcc)
        d = out["density"].float().cpu().numpy()
        est.append(d)
        truth.append(page.ink)
        counts.append(out["counts"].cpu().numpy())
        if np.ptp(page.ink) > 0 and np.ptp(d) > 0:
            per_page.append(spearmanr(d, page.ink).statistic)
    est_all, truth_all, counts_all = np.concatenate(est), np.concatenate(truth), np.concatenate(counts)
    return {
        "spearman": float(spearmanr(est_all, truth_all).statistic),
        "spearman_budget": float(spearmanr(counts_all, truth_all).statistic),
        "median_page_spearman": float(np.median(per_page)) if per_page else float("nan"),
        "crops": int(len(est_all)),
        "pages": len(pages),
        "mean_ink": float(truth_all.mean()),
    }
