"""``CompressPipeline``: compress one image inside a CLIP image tower and show what changed.

    from mmtok.compression.pipeline import CompressPipeline
    pipe = CompressPipeline("lightclip-shapes64")              # explain-shapes64 loads on first use
    out = pipe.run("scene.png", method="tcc", keep=0.5)          # path, PIL image, HxWx3 uint8 or tensor
    out["tokens_kept"], out["top_before"], out["top_after"], out["overlay"]   # overlay: PIL image

``run`` returns a dict: ``method``, ``keep``, ``layer`` (blocks run on all tokens before compressing),
``tokens_total``, ``tokens_kept``, ``tokens_dropped`` (pruned tokens whose area went to a kept token),
``top_before`` / ``top_after`` (lists of ``{"label", "prob"}``,
zero-shot over ``labels`` -- by default the 128 shapes objects "small red circle" ...),
``same_top1``, ``cosine`` (compressed vs full image embedding), ``seconds_full``,
``seconds_compressed`` (tower only, this image; median of ``repeats`` runs after a warm-up),
``density`` (TCC's estimate, TCC only) and ``overlay``
(the keep-map: dropped patches dimmed and hatched red, kept or merged groups outlined; a PIL image, not JSON).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import hub
from ..clip.pipeline import prepare
from ..clip.zeroshot import OBJECT_TEMPLATES, OBJECTS, class_embeddings
from ..data import from_uint8
from ..data.imagefile import read_image
from ..errors import InputError, MmtokError
from ..runtime import pick_device
from .base import Compressor, TowerRunner, check_keep, keep_map_image
from .baselines import Pool2x2, RandomDrop
from .explain import ExplainCompressor
from .tcc import TCC
from .tome import ToMe

DEFAULT_MODEL = "lightclip-shapes64"
DEFAULT_PREDICTOR = "explain-shapes64"
METHODS = ("tcc", "explain", "tome", "random", "pool")
MAX_LABELS = 1000


def build_compressor(method: str, predictor=None, layer: int | None = None) -> Compressor:
    """A compressor by name (``METHODS``); ``layer`` overrides its default compression layer."""
    if method == "explain":
        if predictor is None:
            raise MmtokError("method explain needs a relevance predictor (e.g. explain-shapes64)")
        if layer not in (None, 0):
            raise InputError("the explainability compressor prunes at the tower's input: --layer must be 0")
        return ExplainCompressor(predictor)
    factories = {"tcc": TCC, "tome": ToMe, "random": RandomDrop, "pool": Pool2x2}
    if method not in factories:
        raise InputError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    return factories[method](1 if layer is None else int(layer))


def to_image_tensor(image: Any) -> torch.Tensor:
    """Path, PIL image, HxWx3 / HxW uint8 array, or [3, H, W] tensor in [-1, 1] -> [3, H, W] float."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return from_uint8(np.array(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        return from_uint8(image)
    if torch.is_tensor(image):
        if image.ndim != 3 or image.shape[0] != 3:
            raise InputError(f"expected a [3, H, W] image tensor, got {tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise InputError("the image holds NaN or Inf values")
        return image.float()
    raise InputError(f"not an image: {type(image).__name__} (give a file path, PIL image or array)")


def _median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls (after the caller's warm-up): one call of a small tower is
    a few ms, where a single timing is mostly noise."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])


class CompressPipeline:
    """Zero-shot labels of an image before and after token compression in a CLIP image tower."""

    def __init__(self, model: str = DEFAULT_MODEL, predictor: str = DEFAULT_PREDICTOR, device: str = "cpu"):
        from ..clip import model as _clip  # noqa: F401  (registers LightCLIP; open_clip, on use)

        self.name, self.predictor_name = str(model), str(predictor)
        self.device = pick_device(device)
        self.model = hub.load(model, device=self.device)
        if getattr(self.model, "task", None) != "clip":
            raise MmtokError(f"{model} is a {getattr(self.model, 'task', 'model')} model, not a CLIP model")
        self.runner = TowerRunner(self.model.clip.visual)
        self.size = self.model.image_size
        self._predictor = None
        self._labels: tuple[tuple[str, ...], torch.Tensor] | None = None

    @property
    def predictor(self):
        if self._predictor is None:
            pred = hub.load(self.predictor_name, device=self.device)
            if getattr(pred, "task", None) != "compress":
                raise MmtokError(f"{self.predictor_name} is not a relevance predictor (ExplainPredictor)")
            self._predictor = pred
        return self._predictor

    def compressor(self, method: str, layer: int | None = None) -> Compressor:
        return build_compressor(method, self.predictor if method == "explain" else None, layer)

    @torch.no_grad()
    def label_embeddings(self, labels: list[str] | None) -> tuple[list[str], torch.Tensor]:
        """Labels and their normalised text embeddings; default: the 128 shapes objects, each a prompt
        ensemble over the nine positions (as ``mmtok eval clip``)."""
        if labels is None:
            if self._labels is None:
                emb = class_embeddings(
                    self.model, list(OBJECTS), list(OBJECT_TEMPLATES),
                    lambda t, c: t.format(size=c[0], colour=c[1], shape=c[2]),
                )  # fmt: skip
                self._labels = (tuple(" ".join(c) for c in OBJECTS), emb)
            return list(self._labels[0]), self._labels[1]
        if isinstance(labels, str):
            labels = [labels]
        labels = [str(t) for t in labels]
        if not labels or any(not t.strip() for t in labels):
            raise InputError("labels: give non-empty texts, e.g. --labels 'a red circle' 'a blue square'")
        if len(labels) > MAX_LABELS:
            raise InputError(f"labels: {len(labels)} texts is over the {MAX_LABELS} limit")
        return labels, self.model.encode_text(labels)["embeds"].float()

    @torch.no_grad()
    def run(
        self,
        image: Any,
        method: str = "tcc",
        keep: float = 0.5,
        labels: list[str] | None = None,
        top: int = 3,
        layer: int | None = None,
        repeats: int = 5,
    ) -> dict[str, Any]:
        keep = check_keep(keep)
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise InputError(f"top must be a positive integer, got {top!r}")
        compressor = self.compressor(method, layer)
        pixels = prepare(to_image_tensor(image), self.size)
        names, text = self.label_embeddings(labels)
        x = pixels[None].to(self.device)
        full = self.runner(x)  # also the warm-up: a first call pays for allocation, not for tokens
        comp = self.runner(x, compressor, keep)
        seconds_full = _median_seconds(lambda: self.runner(x), repeats)
        seconds_comp = _median_seconds(lambda: self.runner(x, compressor, keep), repeats)
        scale = self.model.logit_scale.exp().float()

        def ranked(pooled):
            emb = torch.nn.functional.normalize(pooled.float(), dim=-1)
            probs = (scale * emb @ text.T).softmax(-1)[0].cpu()
            order = probs.argsort(descending=True)[: min(top, len(names))].tolist()
            return emb, [{"label": names[i], "prob": float(probs[i])} for i in order]

        e_full, before = ranked(full.pooled)
        e_comp, after = ranked(comp.pooled)
        c = comp.compressed
        dropped = c.extra.get("dropped") if c.extra else None
        overlay = keep_map_image(
            pixels, c.source[0], comp.grid, 4, dropped=None if dropped is None else dropped[0]
        )
        overlay = Image.fromarray(overlay)
        out = {
            "model": self.name,
            "method": method,
            "keep": keep,
            "layer": compressor.layer,
            "tokens_total": int(full.tokens.shape[1]),
            "tokens_kept": int((c.sizes[0] > 0).sum()),
            "tokens_dropped": int(dropped[0].sum()) if dropped is not None else 0,
            "top_before": before,
            "top_after": after,
            "same_top1": before[0]["label"] == after[0]["label"],
            "cosine": float((e_full * e_comp).sum()),
            "seconds_full": seconds_full,
            "seconds_compressed": seconds_comp,
            "overlay": overlay,
        }
        if c.extra and "density" in c.extra:
            out["density"] = float(c.extra["density"][0])
        return out
