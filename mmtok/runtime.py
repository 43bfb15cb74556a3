"""Device, dtype, seeding and threads: the few run-time choices every command shares."""

from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np
import torch

from .errors import MmtokError


def pick_device(name: str | None = None) -> torch.device:
    """``None``/"auto" -> cuda > mps > cpu; otherwise validate the requested device."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise MmtokError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MmtokError(f"device {name!r} requested but CUDA is not available here: use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MmtokError(f"device {name!r} requested but MPS is not available here: use --device cpu")
    return device


# CPU features with native bf16 dot products (x86: AVX512-BF16, AMX-BF16; Arm: BF16). Without them
# oneDNN emulates bf16 and autocast runs far *slower* than fp32: on an AVX2-only AMD EPYC a 1024^3
# matmul and a 3x3 conv ran ~100x and kl-f8-64's encode + decode 24x slower in bf16
# (benchmarks/bench_precision.py). With them bf16 matmuls run ~3.5x faster.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@functools.cache
def _cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / Arm
                    return any(flag in line.split() for flag in _BF16_CPU_FLAGS)
    except OSError:  # no /proc (macOS, Windows): assume emulated bf16
        pass
    return False


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast speeds ``device`` up: CUDA with bf16 support, or a CPU with native bf16
    dot products. ``$MMTOK_BF16`` (``1``/``0``) overrides the detection for every device."""
    env = os.environ.get("MMTOK_BF16", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


def use_bf16(device: torch.device | str, requested: bool | None = None) -> bool:
    """Resolve a ``bf16`` option: ``None`` ("auto") -> :func:`bf16_is_fast`; ``True``/``False`` as asked
    (``True`` on MPS is ``False``: autocast here covers CPU and CUDA only)."""
    if requested is None:
        return bf16_is_fast(device)
    return bool(requested) and torch.device(device).type in ("cpu", "cuda")


def autocast(device: torch.device | str, enabled: bool | None = True):
    """bf16 autocast on CPU and CUDA; ``enabled=None`` turns it on only where it is faster
    (:func:`bf16_is_fast`).

    MPS and disabled autocast return a null context so callers can always write ``with autocast(d):``.
    """
    device = torch.device(device)
    if not use_bf16(device, enabled):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same way for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads (default: $MMTOK_THREADS or all cores)."""
    n = n or int(os.environ.get("MMTOK_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
