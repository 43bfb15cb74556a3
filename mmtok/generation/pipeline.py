"""Generation pipeline: prompt or class -> images, the one entry point of ``mmtok generate`` and the UI.

    from mmtok.generation.pipeline import GenerationPipeline
    pipe = GenerationPipeline("xar-shapes64")
    result = pipe(prompt="a small red circle in the middle", n=4, seed=0)
    result.images          # list of 3 x 64 x 64 tensors in [-1, 1]
    pipe.save(result, "out/")   # lossless PNGs + manifest.json

The generator's config names the tokenizer whose latents it models; the pipeline loads both, runs
the sampler under bf16 autocast, decodes, and validates every setting with one-line errors.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import hub
from ..data.imagefile import write_png
from ..data.shapes import vocabulary_note
from ..errors import InputError
from ..runtime import autocast, pick_device, use_bf16

MAX_IMAGES = 256
MAX_STEPS = 500
MAX_CFG = 20.0


@dataclass
class GenerationResult:
    images: list[torch.Tensor]  # each 3 x H x W in [-1, 1], float32 on the CPU
    settings: dict[str, Any]  # model, prompt / class, n, seed, steps, cfg, sampler ...
    seconds: float  # sampling + decoding wall time
    timings: dict[str, float] = field(default_factory=dict)
    note: str | None = None  # e.g. the prompt's words the model never saw, and the words it knows


def progress_units(model) -> int:
    """How many ``callback`` calls one batch makes: entities (xAR), stages (ECAR), positions (ELM)."""
    return int(getattr(model, "seq_len", 0)) if hasattr(model, "bits") else model.entities.num_entities


def decode(tokenizer, out: torch.Tensor) -> torch.Tensor:
    """Images from a generator's output: continuous latents (float) or discrete codes (integers)."""
    return tokenizer.decode(out.float() if out.is_floating_point() else out)


class GenerationPipeline:
    """Load a generator (and its tokenizer) once; generate many times.

    Args:
        model: generator name under ``weights/`` or a folder (``mmtok models`` lists them).
        device: ``cpu``, ``cuda``, ``auto`` ...
        bf16: sample under bf16 autocast; ``None`` (default) where it is faster: CUDA, or a CPU with
            native bf16 (about 3.5x faster there; emulated bf16 on an AVX2-only CPU is slower than fp32).
    """

    def __init__(self, model: str | os.PathLike, device: str | None = "cpu", bf16: bool | None = None):
        self.device = pick_device(device)
        self.name = str(model)
        self.model = hub.load(model, device=self.device)
        if getattr(self.model, "task", None) != "image-generator" or not hasattr(self.model, "sample"):
            raise InputError(f"{model} is not an image generator: `mmtok models` lists the generators")
        self.tokenizer = hub.load(self.model.tokenizer_name, device=self.device)
        bits, made = getattr(self.model, "bits", None), getattr(self.tokenizer, "num_bits", None)
        if bits is not None and made is not None and bits != made:
            # e.g. a generator trained before its tokenizer was widened: its codes would decode to noise
            raise InputError(
                f"{model} predicts {bits}-bit codes but its tokenizer {self.model.tokenizer_name} "
                f"makes {made}-bit codes: retrain it on that tokenizer's codes"
            )
        self.bf16 = use_bf16(self.device, bf16)

    @property
    def condition(self) -> str:
        return self.model.condition

    def check(self, prompt: str | None, class_label: int | None, n: int, steps: int, cfg: float) -> Any:
        """Validate the settings; returns the per-image condition list."""
        m = self.model
        if (prompt is None) == (class_label is None):
            raise InputError("give exactly one of a prompt (--prompt) or a class (--class)")
        if m.condition == "text":
            if prompt is None:
                raise InputError(f"{self.name} is text-conditional: give a prompt, not a class")
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError("the prompt is empty")
            tokens = m.text.count_tokens(prompt)
            if tokens > m.text_length:
                raise InputError(
                    f"the prompt is {tokens} tokens long; {self.name} reads at most {m.text_length}"
                )
            cond: list[Any] = [prompt.strip()] * n
        else:
            if class_label is None:
                raise InputError(f"{self.name} is class-conditional: give a class, not a prompt")
            if isinstance(class_label, bool) or not isinstance(class_label, int):
                raise InputError(f"the class must be an integer, got {class_label!r}")
            if not 0 <= class_label < m.num_classes:
                raise InputError(
                    f"unknown class {class_label}: {self.name} has classes 0..{m.num_classes - 1}"
                )
            cond = [class_label] * n
        if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
            raise InputError(f"the number of images must be in 1..{MAX_IMAGES}, got {n}")
        if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise InputError(f"steps must be in 1..{MAX_STEPS}, got {steps}")
        if not isinstance(cfg, int | float) or not 0 <= cfg <= MAX_CFG:
            raise InputError(f"the guidance scale must be in 0..{MAX_CFG:g}, got {cfg}")
        return cond

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        class_label: int | None = None,
        n: int = 1,
        seed: int = 0,
        steps: int = 20,
        cfg: float = 3.0,
        sampler: str | None = None,
        cfg_schedule: str = "linear",
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> GenerationResult:
        """Generate ``n`` images; ``progress(done, total)`` is called after every entity of every batch."""
        cond = self.check(prompt, class_label, n, steps, cfg)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise InputError(f"the seed must be an integer in 0..2^63-1, got {seed!r}")
        generator = torch.Generator().manual_seed(int(seed))  # on the CPU: same images on any device
        images, start = [], time.perf_counter()
        timings = {"sample": 0.0, "decode": 0.0}
        sampler = sampler or getattr(self.model, "default_sampler", "euler_maruyama")
        E = progress_units(self.model)
        batches = [cond[i : i + batch_size] for i in range(0, n, batch_size)]
        for b, chunk in enumerate(batches):
            done = b * E
            callback = (lambda e, total, d=done: progress(d + e, len(batches) * total)) if progress else None
            t0 = time.perf_counter()
            with autocast(self.device, enabled=self.bf16):
                latents = self.model.sample(
                    chunk, steps=steps, cfg=float(cfg), cfg_schedule=cfg_schedule, sampler=sampler,
                    generator=generator, callback=callback,
                )  # fmt: skip
            t1 = time.perf_counter()
            with autocast(self.device, enabled=self.bf16):
                pixels = decode(self.tokenizer, latents).float().clamp(-1, 1).cpu()
            timings["sample"] += t1 - t0
            timings["decode"] += time.perf_counter() - t1
            images += list(pixels)
        settings = {
            "model": self.name, "prompt": prompt, "class": class_label, "n": n, "seed": int(seed),
            "steps": steps, "cfg": float(cfg), "cfg_schedule": cfg_schedule, "sampler": sampler,
            "device": str(self.device), "bf16": self.bf16,
        }  # fmt: skip
        note = self.prompt_note(prompt)
        return GenerationResult(images, settings, time.perf_counter() - start, timings, note)

    def prompt_note(self, prompt: str | None) -> str | None:
        """The words of ``prompt`` this model never saw in training, with its vocabulary (None: none).

        Every text-conditional generator mmtok ships learnt the shapes test bed's caption grammar, so
        any other word (\"photo\", \"pentagon\") is ignored by it: the images still come, with this note."""
        if prompt is None or self.condition != "text":
            return None

        return vocabulary_note(prompt)

    @staticmethod
    def save(result: GenerationResult, out: str | os.PathLike) -> dict[str, Any]:
        """Write ``image_000.png`` ... (lossless) and ``manifest.json`` into ``out``; return the manifest."""
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the output folder {out}: {e.strerror or e}") from e
        files = [str(write_png(img, out / f"image_{i:03d}.png")) for i, img in enumerate(result.images)]
        manifest = {"settings": result.settings, "seconds": result.seconds, "timings": result.timings}
        if result.note:
            manifest["note"] = result.note
        manifest["images"] = files
        tmp = out / ".manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, out / "manifest.json")
        return manifest
