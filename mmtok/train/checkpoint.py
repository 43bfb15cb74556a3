"""Training checkpoints: atomic files that reload with ``torch.load(..., weights_only=True)``.

A checkpoint is one ``step_<N>.pt`` file in ``<run>/checkpoints/`` holding only tensors and plain
containers: model, optimizer, scheduler and EMA state dicts, the step, the config as a plain dict
and the RNG states of every rank (Python, NumPy, torch CPU and CUDA encoded as tensors, stacked on
a leading rank axis). It is written to a temp file in the same folder and renamed with
``os.replace``, so a killed run leaves either the old set of checkpoints or the new one, never half
a file; ``latest`` is simply the highest step.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

FORMAT = "mmtok-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"step_(\d+)\.pt")
REQUIRED = ("format", "version", "step", "model", "optimizer", "scheduler", "config", "rng")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``folder`` as (step, path), oldest first (temp files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: temp file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save({"format": FORMAT, "version": VERSION, **state}, writer)
            except RuntimeError:  # torch's zip writer turns a failed write into a RuntimeError
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    except OSError as e:  # a full disk or an unwritable folder: the older checkpoints stay intact
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _Writer:
    """A file wrapper that remembers the ``OSError`` (full disk, file too large) of a failed write."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint this project wrote (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt or not a torch file -> one line naming it
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmtok training checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('version')!r}, expected {VERSION}")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and stale temp files of killed runs)."""
    folder = Path(folder)
    removed = [p for _, p in list_checkpoints(folder)[:-keep]]
    removed += [p for p in folder.glob(".step_*.tmp")]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


# ----------------------------------------------------------------------------- RNG states as tensors


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as fixed-shape tensors (so ranks can be gathered and saved safely)."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.tensor([*keys.tolist(), pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of ``rng_state`` (one rank's slice)."""
    python = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((python[0], tuple(python[1:]), None if np.isnan(gauss) else gauss))
    numpy = state["numpy"].tolist()
    keys = np.array(numpy[:624], dtype=np.uint32)
    np.random.set_state(("MT19937", keys, numpy[624], numpy[625], float(state["numpy_gauss"][0])))
    # clone(): a row of the saved [world, ...] tensor is a view at an offset, which set_state misreads.
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu().clone())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu().clone())
