"""Next-X entities: how the tokens of an H x W latent grid are ordered and grouped for AR generation.

An autoregressive generator (xAR, ECAR, ELM) predicts one *entity* per step: a group of tokens that
are produced together and see each other fully, while seeing earlier entities only (block-causal).
Grid positions are numbered in row-major order, ``index = row * W + col``. Kinds:

- ``token``: every position is its own entity, raster order (LlamaGen, ELM).
- ``cell``: ``k x k`` neighbouring positions; cells in raster order, tokens inside a cell in raster
  order. The default ``k`` gives a 2 x 2 grid of cells on a square grid (xAR's released config).
- ``subsample``: positions sharing ``(row % s, col % s)``; ``s * s`` entities, each a strided
  ``(H/s) x (W/s)`` view of the whole image, ordered by offset ``(row % s) * s + col % s``.
- ``scale``: coarse-to-fine maps (VAR / E-CAR). Entity ``k`` is the latent area-downsampled to
  ``h_k x w_k``; the finest scale is the grid itself. This is a *pyramid*, not VAR's residual: each
  entity holds the map at its resolution, so the sequence has ``sum(h_k * w_k)`` tokens and
  ``ungroup`` returns the finest scale. Integer codes cannot be area-averaged, so ``scale`` needs a
  continuous latent.
- ``image``: one entity holding all positions (one step; bidirectional attention).

    ents = make_entities("cell", (16, 16))          # 4 cells of 8 x 8 tokens
    seq = ents.group(latent)                        # B x C x 16 x 16 -> B x 256 x C, cell by cell
    mask = ents.block_causal_mask()                 # 256 x 256 bool, True = may attend
    latent = ents.ungroup(seq)

Index tensors are built once per ``(kind, grid, size)`` (``make_entities`` is cached) and are
shared: treat them as read-only. See ``docs/entities.md``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError

KINDS = ("token", "cell", "subsample", "scale", "image")

Grid = tuple[int, int]
Size = int | tuple[Grid, ...] | None


class Positions(NamedTuple):
    """Where each sequence position sits; all tensors have length L (sequence order).

    Attributes:
        row: LongTensor, row at the token's own resolution (the grid, or scale ``k``'s map).
        col: LongTensor, column at the token's own resolution.
        scale: LongTensor, scale index (0 = coarsest) for ``scale``; zeros for the other kinds.
        center: FloatTensor L x 2, ``(y, x)`` of the token's centre in [0, 1] of the image, so tokens
            of different scales that cover the same place get nearby coordinates.
    """

    row: torch.Tensor
    col: torch.Tensor
    scale: torch.Tensor
    center: torch.Tensor


def downsample(x: torch.Tensor, size: Grid) -> torch.Tensor:
    """Area-downsample a B x C x H x W latent to ``size`` (the per-scale target of ``scale``)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="area")


def upsample(x: torch.Tensor, size: Grid) -> torch.Tensor:
    """Bilinearly upsample a B x C x h x w map to ``size`` (how a coarse scale conditions a finer one)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class Entities:
    """Order, grouping and block-causal mask of the tokens of one latent grid.

    Build with :func:`make_entities` (validated, default sizes, cached). Fields are normalised:
    ``grid`` is ``(H, W)``; ``size`` is ``k`` (cell), ``s`` (subsample), a tuple of ``(h, w)`` per
    scale, coarse to fine (scale), or ``None`` (token, image).
    """

    kind: str
    grid: Grid
    size: Size = None
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        kind, grid, size = _normalise(self.kind, self.grid, self.size)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "size", size)

    # ------------------------------------------------------------------ index tensors (built once)

    @property
    def scales(self) -> tuple[Grid, ...]:
        """The ``(h, w)`` of each entity's map for ``scale``; ``(grid,)`` otherwise."""
        return self.size if self.kind == "scale" else (self.grid,)

    @cached_property
    def entity_sizes(self) -> tuple[int, ...]:
        """Number of tokens in each entity, in generation order."""
        H, W = self.grid
        n = H * W
        if self.kind == "token":
            return (1,) * n
        if self.kind == "cell":
            return (self.size**2,) * (n // self.size**2)
        if self.kind == "subsample":
            return (n // self.size**2,) * self.size**2
        if self.kind == "scale":
            return tuple(h * w for h, w in self.size)
        return (n,)

    @property
    def num_entities(self) -> int:
        return len(self.entity_sizes)

    @property
    def seq_len(self) -> int:
        """Sequence length L: H * W, except for ``scale`` where it is the sum over scales."""
        return sum(self.entity_sizes)

    @cached_property
    def entity_ids(self) -> torch.Tensor:
        """LongTensor[L]: the entity index of each sequence position (non-decreasing)."""
        sizes = torch.tensor(self.entity_sizes)
        return torch.arange(len(sizes)).repeat_interleave(sizes)

    @cached_property
    def order(self) -> torch.Tensor:
        """LongTensor[L]: sequence position -> grid index (a permutation of ``range(H * W)``).

        ``scale`` has no permutation (its sequence is longer than the grid): use ``group``/``ungroup``
        and ``positions()``.
        """
        if self.kind == "scale":
            raise ValueError("scale entities have no token permutation; use group/ungroup and positions()")
        H, W = self.grid
        index = torch.arange(H * W)
        if self.kind == "cell":
            k = self.size
            # (cell row, row in cell, cell col, col in cell) -> cells first, raster inside a cell.
            return index.view(H // k, k, W // k, k).permute(0, 2, 1, 3).reshape(-1)
        if self.kind == "subsample":
            s = self.size
            # (row // s, row % s, col // s, col % s) -> offsets first, then the strided sub-grid.
            return index.view(H // s, s, W // s, s).permute(1, 3, 0, 2).reshape(-1)
        return index

    @cached_property
    def inverse(self) -> torch.Tensor:
        """LongTensor[H * W]: grid index -> sequence position (the inverse of ``order``)."""
        inverse = torch.empty_like(self.order)
        inverse[self.order] = torch.arange(len(self.order))
        return inverse

    @cached_property
    def _mask(self) -> torch.Tensor:
        ids = self.entity_ids
        return ids[:, None] >= ids[None, :]

    def block_causal_mask(
        self, dtype: torch.dtype = torch.bool, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """L x L attention mask: position i may attend j iff ``entity(j) <= entity(i)``.

        Args:
            dtype: ``torch.bool`` (True = may attend, SDPA's convention) or a float dtype, which gives
                an additive mask (0 where allowed, -inf elsewhere).
            device: where to put it.
        """
        mask = self._mask.to(device)
        if dtype == torch.bool:
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))

    def entity_slices(self) -> tuple[slice, ...]:
        """``slice(start, stop)`` of each entity in the sequence: contiguous and covering ``[0, L)``."""
        stops = torch.tensor(self.entity_sizes).cumsum(0).tolist()
        return tuple(slice(stop - n, stop) for stop, n in zip(stops, self.entity_sizes, strict=True))

    def positions(self) -> Positions:
        """Row, column, scale index and normalised centre of every sequence position."""
        return self._positions

    @cached_property
    def _positions(self) -> Positions:
        if self.kind == "scale":
            rows, cols, scale, centers = [], [], [], []
            for k, (h, w) in enumerate(self.size):
                r, c = torch.arange(h * w).div(w, rounding_mode="floor"), torch.arange(h * w) % w
                rows.append(r), cols.append(c), scale.append(torch.full((h * w,), k))
                centers.append(torch.stack([(r + 0.5) / h, (c + 0.5) / w], dim=1))
            return Positions(torch.cat(rows), torch.cat(cols), torch.cat(scale), torch.cat(centers))
        H, W = self.grid
        row, col = self.order.div(W, rounding_mode="floor"), self.order % W
        center = torch.stack([(row + 0.5) / H, (col + 0.5) / W], dim=1)
        return Positions(row, col, torch.zeros_like(row), center)

    def _index(self, name: str, device: torch.device) -> torch.Tensor:
        # Index tensors live on the CPU; keep one copy per device so GPU calls don't re-upload them.
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(device)
        return self._on_device[key]

    # ------------------------------------------------------------------ group / ungroup

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """Grid -> sequence in entity order.

        Args:
            x: a continuous latent B x C x H x W (4-D floating point) or integer codes B x H x W, or
                B x H x W x m with sub-tokens.

        Returns:
            B x L x C for a latent, B x L (or B x L x m) for codes.
        """
        latent = self._check_grid(x)
        if self.kind == "scale":
            return torch.cat([m.flatten(2) for m in self.pyramid(x)], dim=2).transpose(1, 2)
        if latent:
            return x.flatten(2).index_select(2, self._index("order", x.device)).transpose(1, 2)
        return x.flatten(1, 2).index_select(1, self._index("order", x.device))

    def ungroup(self, seq: torch.Tensor) -> torch.Tensor:
        """Sequence in entity order -> grid; the inverse of :meth:`group`.

        Args:
            seq: B x L x C (floating point: a latent) or integer codes B x L / B x L x m.

        Returns:
            B x C x H x W for a latent, B x H x W (x m) for codes. For ``scale`` this is the finest
            scale's map; the coarser entities are not used (they are its area averages).
        """
        H, W = self.grid
        latent = seq.dim() == 3 and seq.is_floating_point()
        if seq.shape[1] != self.seq_len:
            raise ValueError(f"expected a sequence of {self.seq_len} tokens, got shape {tuple(seq.shape)}")
        if self.kind == "scale":
            self._check_continuous(latent, seq)
            return self.scale_maps(seq)[-1]
        seq = seq.index_select(1, self._index("inverse", seq.device))
        if latent:
            return seq.transpose(1, 2).unflatten(2, (H, W))
        return seq.unflatten(1, (H, W))

    # ------------------------------------------------------------------ scale helpers

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B x C x H x W latent -> one map per scale, coarse to fine (area downsampling)."""
        return [downsample(x, size) for size in self.scales]

    def scale_maps(self, seq: torch.Tensor) -> list[torch.Tensor]:
        """B x L x C sequence -> one B x C x h_k x w_k map per entity (scale), coarse to fine."""
        parts = seq.transpose(1, 2).split(self.entity_sizes, dim=2)
        return [p.unflatten(2, size) for p, size in zip(parts, self.scales, strict=True)]

    def next_scale_inputs(self, seq: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs for next-scale prediction, B x L x C.

        The tokens of scale k hold scale k-1 bilinearly upsampled to ``(h_k, w_k)`` (VAR's and
        E-CAR's conditioning); scale 0, which has nothing coarser, holds zeros.
        """
        if self.kind != "scale":
            raise ValueError(f"next_scale_inputs needs scale entities, not {self.kind!r}")
        maps = self.scale_maps(seq)
        inputs = [torch.zeros_like(maps[0])]
        inputs += [upsample(m, size) for m, size in zip(maps[:-1], self.scales[1:], strict=True)]
        return torch.cat([m.flatten(2) for m in inputs], dim=2).transpose(1, 2)

    # ------------------------------------------------------------------ checks

    def _check_grid(self, x: torch.Tensor) -> bool:
        latent = x.dim() == 4 and x.is_floating_point()
        spatial = tuple(x.shape[-2:]) if latent else tuple(x.shape[1:3])
        if x.dim() not in (3, 4) or spatial != self.grid:
            raise ValueError(
                f"expected a B x C x {self.grid[0]} x {self.grid[1]} latent or B x {self.grid[0]} x "
                f"{self.grid[1]} [x m] codes, got shape {tuple(x.shape)}"
            )
        if self.kind == "scale":
            self._check_continuous(latent, x)
        return latent

    @staticmethod
    def _check_continuous(latent: bool, x: torch.Tensor) -> None:
        if not latent:
            raise ValueError(
                f"scale entities need a continuous floating-point latent (codes cannot be area-averaged), "
                f"got {x.dtype} of shape {tuple(x.shape)}"
            )


# ---------------------------------------------------------------------------- factory


def make_entities(kind: str, grid: int | Grid, size: int | tuple | list | None = None) -> Entities:
    """Validated, cached :class:`Entities` for ``kind`` on an ``H x W`` grid.

    Args:
        kind: one of ``token``, ``cell``, ``subsample``, ``scale``, ``image``.
        grid: ``(H, W)`` or ``H`` for a square grid.
        size: ``cell``: side ``k`` of a cell (default: the largest proper divisor of gcd(H, W), so a
            square grid of even side gets xAR's 2 x 2 grid of cells); ``subsample``: stride ``s``
            (default 2); ``scale``: the scales, coarse to fine, each ``s`` (square) or ``(h, w)``,
            ending at the grid (default: the grid halved until 1, e.g. 1, 2, 4, 8 for 8 x 8);
            ``token`` and ``image`` take none.

    Raises:
        ConfigError: unknown kind, or a size that does not fit the grid.
    """
    return _cached(*_normalise(kind, grid, size))


@lru_cache(maxsize=256)
def _cached(kind: str, grid: Grid, size: Size) -> Entities:
    return Entities(kind, grid, size)


def _normalise(kind, grid, size) -> tuple[str, Grid, Size]:
    if kind not in KINDS:
        raise ConfigError(f"unknown entity kind {kind!r}: use one of {', '.join(KINDS)}")
    pair = (grid, grid) if _is_int(grid) else tuple(grid) if isinstance(grid, tuple | list) else ()
    if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
        raise ConfigError(f"grid must be a positive int or (H, W) pair of positive ints, got {grid!r}")
    H, W = int(pair[0]), int(pair[1])
    g = f"{H}x{W} grid"
    if kind in ("token", "image"):
        if size is not None:
            raise ConfigError(f"{kind} entities take no size, got {size!r}")
        return kind, (H, W), None
    if kind == "scale":
        return kind, (H, W), _scales(size, H, W)
    if size is None:
        gcd = math.gcd(H, W)
        size = 2 if kind == "subsample" else max([d for d in range(1, gcd) if gcd % d == 0], default=1)
    if not _is_int(size) or size < 1:
        raise ConfigError(f"{kind} size must be a positive integer, got {size!r}")
    if H % size or W % size:
        raise ConfigError(f"{kind} size {size} does not divide the {g}")
    return kind, (H, W), int(size)


def _scales(size, H: int, W: int) -> tuple[Grid, ...]:
    if size is None:  # halve (rounding up) until 1 x 1, e.g. 8x8 -> 1, 2, 4, 8; 6x6 -> 1, 2, 3, 6
        scales = [(H, W)]
        while scales[0] != (1, 1):
            h, w = scales[0]
            scales.insert(0, (-(-h // 2), -(-w // 2)))
        return tuple(scales)
    if not isinstance(size, tuple | list) or not size:
        raise ConfigError(f"scale sizes must be a non-empty list of ints or (h, w) pairs, got {size!r}")
    scales = []
    for s in size:
        pair = (s, s) if _is_int(s) else tuple(s) if isinstance(s, tuple | list) else ()
        if len(pair) != 2 or not all(_is_int(v) and v >= 1 for v in pair):
            raise ConfigError(f"each scale must be a positive int or (h, w) pair, got {s!r}")
        scales.append((int(pair[0]), int(pair[1])))
    if scales[-1] != (H, W):
        raise ConfigError(f"the last scale must be the grid {H}x{W}, got {scales[-1][0]}x{scales[-1][1]}")
    for (h0, w0), (h1, w1) in zip(scales, scales[1:], strict=False):
        if h1 < h0 or w1 < w0 or (h0, w0) == (h1, w1):
            raise ConfigError(f"scales must grow coarse to fine, got {h0}x{w0} then {h1}x{w1}")
    return tuple(scales)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


__all__ = ["KINDS", "Entities", "Positions", "downsample", "make_entities", "upsample"]
