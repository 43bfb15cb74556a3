"""CLIP pipelines: zero-shot classification of image files and text search over a folder of images.

    from mmtok.clip.pipeline import ClipPipeline
    pipe = ClipPipeline("lightclip-shapes64")
    pipe.classify(["a.png"], ["a red circle", "a blue square"])   # [{"file", "label", "score", "scores"}]
    pipe.search("photos/", "a small green star", top=5)           # {"results": [{"path", "score"}], ...}

A softmax over the labels a user typed always sums to 1, so a CLIP names *something* with high
confidence even for a photo of an astronaut. ``classify`` therefore also says how familiar each image
is: the mean cosine similarity of its embedding to its 5 nearest training images (``familiarity``),
and whether that is at least the 1st percentile of held-out in-domain images (``familiar``).

Images are read by content (``mmtok.data.imagefile.read_image``), resized so the shorter side is the
model's resolution and centre-cropped. ``search`` embeds the folder once and caches the embeddings
(safetensors, keyed by model weights and folder) under ``$MMTOK_CACHE`` (default ``~/.cache/mmtok``);
a later search re-embeds only files that are new or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import hub
from ..data.imagefile import read_image
from ..errors import InputError, MmtokError

DEFAULT_MODEL = "lightclip-shapes64"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_LABELS = 1000
MAX_TEXT_CHARS = 1000
# The test beds the shipped CLIPs were trained on: (dataset, split, images) for the reference bank of
# training images and for the held-out images that set the familiarity threshold.
DOMAIN_BANK = (("shapes", "train", 768), ("digits", "train", 256))
DOMAIN_HELDOUT = (("shapes", "heldout", 256), ("digits", "test", 128))
DOMAIN_K = 5
DOMAIN_TEXT = "64x64 scenes of coloured shapes (circle, square, triangle, star, ...) and handwritten digits"


def cache_dir() -> Path:
    return Path(os.environ.get("MMTOK_CACHE") or Path.home() / ".cache" / "mmtok") / "clip-search"


def prepare(image: torch.Tensor, size: int) -> torch.Tensor:
    """[3, H, W] in [-1, 1] -> [3, size, size]: shorter side resized to ``size``, then centre-cropped."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(
            image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
        )[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[:, top : top + size, left : left + size].clamp(-1, 1)


def _check_texts(texts: Any, what: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts:
        raise InputError(f'{what}: give at least one text (e.g. --labels "a red circle" "a blue square")')
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{what}: every text must be a non-empty string, got {t!r}")
        if len(t) > MAX_TEXT_CHARS:
            raise InputError(f"{what}: a text of {len(t)} characters is over the {MAX_TEXT_CHARS} limit")
    if len(texts) > MAX_LABELS:
        raise InputError(f"{what}: {len(texts)} texts is over the {MAX_LABELS} limit")
    return list(texts)


class ClipPipeline:
    """Zero-shot classification and text-to-image search with a named CLIP checkpoint."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "cpu"):
        from ..runtime import pick_device

        # The model class must be registered before loading (import is what registers it).
        from . import model as _model  # noqa: F401

        self.name = str(model)
        self.device = pick_device(device)
        self.model = hub.load(model, device=self.device)
        if getattr(self.model, "task", None) != "clip":
            raise MmtokError(f"{model} is a {getattr(self.model, 'task', 'model')} model, not a CLIP model")
        self.size = self.model.image_size
        self._domain: tuple[torch.Tensor, float] | None = None

    @torch.no_grad()
    def embed_images(self, images: list[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
        """Normalised embeddings [N, E] of [3, H, W] images in [-1, 1]."""
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([prepare(im, self.size) for im in images[i : i + batch_size]])
            out.append(self.model.encode_image(x.to(self.device))["embeds"].float().cpu())
        return torch.cat(out)

    def domain(self) -> tuple[torch.Tensor, float]:
        """(bank of training-image embeddings, familiarity threshold), made once per pipeline (~3 s):
        the threshold is the 1st percentile of held-out in-domain images' familiarity."""
        if self._domain is None:
            from ..data import build_dataset

            def images(parts):
                return [
                    build_dataset(name, split, resolution=self.size)[i]["image"]
                    for name, split, n in parts
                    for i in range(n)
                ]

            bank = self.embed_images(images(DOMAIN_BANK))
            self._domain = (bank, 0.0)
            held = self.familiarity(self.embed_images(images(DOMAIN_HELDOUT)))
            self._domain = (bank, float(held.quantile(0.01)))
        return self._domain

    def familiarity(self, embeds: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity of each embedding to its ``DOMAIN_K`` nearest training images."""
        bank = self.domain()[0]
        return (embeds @ bank.T).topk(DOMAIN_K, dim=-1).values.mean(-1)

    @torch.no_grad()
    def embed_files(self, paths: list[Path], batch_size: int = 64) -> torch.Tensor:
        """Normalised embeddings [N, E] of image files; a bad file raises ``InputError`` naming it."""
        out = [
            self.embed_images([read_image(p) for p in paths[i : i + batch_size]], batch_size)
            for i in range(0, len(paths), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.model.clip.text.output_dim)

    @torch.no_grad()
    def classify(
        self, images: list[str | os.PathLike], labels: list[str], top: int | None = None
    ) -> list[dict]:
        """Best label and the probability of each label for every image (softmax over ``labels``), with
        how familiar the image is to the model (see the module docstring)."""
        labels = _check_texts(labels, "labels")
        if not images:
            raise InputError("classify: give at least one image file")
        paths = [Path(p) for p in images]
        image_embeds = self.embed_files(paths)  # every file is read (and validated) before any result
        text_embeds = self.model.encode_text(labels)["embeds"].float().cpu()
        sims = image_embeds @ text_embeds.T
        probs = (self.model.logit_scale.exp().float().cpu() * sims).softmax(-1)
        familiar = self.familiarity(image_embeds)
        threshold = self.domain()[1]
        results = []
        for path, p, sim, fam in zip(paths, probs, sims, familiar, strict=True):
            order = p.argsort(descending=True)[: top or len(labels)].tolist()
            results.append(
                {
                    "file": str(path),
                    "label": labels[order[0]],
                    "score": float(p[order[0]]),
                    "scores": {labels[j]: float(p[j]) for j in order},
                    "similarity": float(sim[order[0]]),  # raw cosine of the best label
                    "familiarity": round(float(fam), 4),
                    "familiar": bool(fam >= threshold),
                    "familiar_threshold": round(threshold, 4),
                }
            )
        return results

    # -- search ---------------------------------------------------------------------------------

    def _cache_file(self, folder: Path) -> Path:
        weights = hub.resolve(self.name) / hub.WEIGHTS_NAME
        stat = weights.stat()
        key = json.dumps([str(weights.resolve()), stat.st_size, stat.st_mtime_ns, str(folder.resolve())])
        return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    @torch.no_grad()
    def search(
        self, folder: str | os.PathLike, text: str, top: int = 5, use_cache: bool = True
    ) -> dict[str, Any]:
        """Rank the images of ``folder`` (recursively) by similarity to ``text``.

        Returns ``{"results": [{"path", "score"}], "indexed": N, "embedded": M, "skipped": [...]}``:
        ``embedded`` counts files embedded now (the rest came from the cache); unreadable image files are
        listed in ``skipped`` with their error and left out, so one bad file does not stop a search.
        """
        text = _check_texts(text, "search text")[0]
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise InputError(f"--top must be a positive integer, got {top!r}")
        root = Path(folder)
        if not root.is_dir():
            raise InputError(f"{root}: not a folder of images")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
        signature = {str(p.relative_to(root)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}
        cached = self._load_cache(root) if use_cache else {}
        embeds, names, skipped, fresh = [], [], [], 0
        todo = [
            p
            for p in files
            if cached.get(str(p.relative_to(root)), (None,))[0] != signature[str(p.relative_to(root))]
        ]
        new: dict[str, torch.Tensor] = {}
        for p in todo:
            try:
                new[str(p.relative_to(root))] = self.embed_files([p])[0]
                fresh += 1
            except InputError as e:
                skipped.append({"path": str(p), "error": str(e)})
        for p in files:
            rel = str(p.relative_to(root))
            vec = new.get(rel)
            if vec is None and rel in cached and cached[rel][0] == signature[rel]:
                vec = cached[rel][1]
            if vec is not None:
                embeds.append(vec)
                names.append(rel)
        if use_cache and (new or len(names) != len(cached)):
            self._save_cache(root, names, embeds, signature)
        if not names:
            raise InputError(f"{root}: none of the {len(files)} image files could be read")
        query = self.model.encode_text([text])["embeds"].float().cpu()[0]
        scores = torch.stack(embeds) @ query
        order = scores.argsort(descending=True)[:top].tolist()
        results = [{"path": str(root / names[i]), "score": float(scores[i])} for i in order]
        return {"results": results, "indexed": len(names), "embedded": fresh, "skipped": skipped}

    def _load_cache(self, root: Path) -> dict[str, tuple[list[int], torch.Tensor]]:
        import safetensors
        import safetensors.torch

        file = self._cache_file(root)
        if not file.is_file():
            return {}
        try:
            with safetensors.safe_open(str(file), framework="pt") as f:
                meta = json.loads(f.metadata()["files"])
            embeds = safetensors.torch.load_file(str(file))["embeds"]
        except Exception:  # a corrupt or foreign cache is rebuilt, never trusted
            return {}
        if len(meta) != len(embeds):
            return {}
        return {name: (sig, embeds[i]) for i, (name, sig) in enumerate(meta)}

    def _save_cache(self, root: Path, names: list[str], embeds: list[torch.Tensor], signature: dict) -> None:
        import safetensors.torch

        file = self._cache_file(root)
        file.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps([[n, signature[n]] for n in names])
        tmp = file.with_name(f".{file.name}.tmp")
        safetensors.torch.save_file(
            {"embeds": torch.stack(embeds).contiguous()}, str(tmp), metadata={"files": meta}
        )
        os.replace(tmp, file)
