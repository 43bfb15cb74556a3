"""Training data for the grounding nets: phantom cases, report sentences and their WEAK labels.

Each training case is a phantom (``phantom.make_case``) whose report is parsed and weak-labelled
(``weaklabel.weak_label``), as the paper trains on weak labels rather than drawn masks: a query is
one located finding, its text is the sentence without numbers, its target is the weak mask of that
finding only (every other lesion is background for this sentence). Cases are built once and cached
on disk (``cache``, safetensors + JSON), so trainings do not regenerate them.

Items (deterministic by index): ``image`` float32 [2, *patch] (SUV, CT scaled to [0, 1]),
``label`` uint8 [1, *patch], ``text`` (str), ``start`` (the crop corner, voxels). Patch centres fall
on the named lesion (``p_target``), on another lesion of the case (``p_other``: the text must say
which one is meant) or on any body voxel. Augmentation is intensity-only (scale, shift): no flips or
rotations, because "left" and "right" in the sentence must stay true of the image.
``mode="volume"`` gives whole volumes (for the 2.5D MIP baseline).

``contrast=True`` adds ``text_other`` and ``label_other`` to every item: the sentence of ANOTHER finding
of the same case and that finding's mask in the same crop (often empty). The model then trains on one
crop under two sentences, so the two targets differ only by the text -- the image alone cannot fit
both, which is the sentence-contrastive signal that patches drawn one sentence at a time lack.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from .grounding_eval import evaluate_model_on_cases
from .model import normalise, with_coordinates
from .phantom import make_case
from .reports import parse_report
from .weaklabel import weak_label

SPLIT_SEEDS = {"train": 0, "val": 1000}  # phantom seeds; `mmtok eval grounding` uses 10000 + --seed


def _plain(x) -> torch.Tensor:
    """MONAI transforms return MetaTensors; the trainer and collate want plain tensors."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _case_files(root: Path, i: int) -> tuple[Path, Path]:
    return root / f"case_{i:04d}.safetensors", root / f"case_{i:04d}.json"


def build_case(seed: int, index: int, shape, spacing: float) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays (image fp16 [2, ...], weak label map, truth SEG) and meta (queries) of one phantom."""
    case = make_case(seed, index, shape=shape, spacing=(spacing,) * 3)
    results = weak_label(parse_report(case.report), case.pet_image())
    weak = np.zeros(case.seg.shape, np.uint8)
    queries = []
    for r in results:
        if r["status"] != "located":
            continue
        k = len(queries) + 1
        weak[r["_mask"] & (weak == 0)] = k
        queries.append(
            {
                "weak": k,
                "text": r["text"],
                "sentence": r["sentence"],
                "lesion": int(case.seg[tuple(r["peak_voxel"])]),  # which true lesion (0: none), for stats
            }
        )
    truth_queries = [
        {"label": les["label"], "sentence": les["sentence"]}
        for les in case.truth["lesions"]
        if les["expect"] == "located"
    ]
    arrays = {
        "image": normalise(case.suv, case.ct).numpy().astype(np.float16),
        "weak": weak,
        "seg": case.seg.astype(np.uint8),
    }
    return arrays, {"queries": queries, "truth_queries": truth_queries, "seed": seed, "index": index}


class GroundingPhantomDataset(Dataset):
    """Phantom patches with one sentence each, labelled by the weak labeller (or the truth).

    Args:
        split: "train" (phantom seed 0) or "val" (seed 1000).
        n_cases: phantoms in the split.
        shape: phantom grid (voxels); spacing: isotropic voxel size (mm).
        patch: crop size; ``mode="volume"`` returns whole volumes instead.
        size: items per epoch (each item: a query, a random crop); 0 = 50 per query.
        labels: "weak" (default: the weak-labelling pipeline) or "truth" (the phantom's SEG).
        p_target, p_other: probabilities of centring the crop on the named lesion / another lesion.
        augment: intensity augmentation (never spatial flips).
        coordinates: add the body-coordinate channels (``model.with_coordinates``) before cropping.
        contrast: also return another finding's sentence and mask for the same crop (see above).
        cache: folder for the built cases.
    """

    def __init__(
        self,
        split: str = "train",
        n_cases: int = 60,
        shape=(96, 96, 160),
        spacing: float = 4.0,
        patch=(64, 64, 64),
        size: int = 0,
        labels: str = "weak",
        mode: str = "patch",
        p_target: float = 0.5,
        p_other: float = 0.3,
        augment: bool = True,
        coordinates: bool = False,
        contrast: bool = False,
        cache: str = "runs/grounding-cache",
    ):
        if split not in SPLIT_SEEDS:
            raise InputError(f"grounding split must be one of {', '.join(SPLIT_SEEDS)}, got {split!r}")
        if labels not in ("weak", "truth") or mode not in ("patch", "volume"):
            raise InputError("labels must be weak|truth and mode patch|volume")
        self.split, self.seed, self.n_cases = split, SPLIT_SEEDS[split], int(n_cases)
        self.shape, self.spacing = tuple(int(s) for s in shape), float(spacing)
        self.patch, self.labels, self.mode = tuple(int(p) for p in patch), labels, mode
        self.p_target, self.p_other = float(p_target), float(p_other)
        self.coordinates, self.contrast = bool(coordinates), bool(contrast)
        self.root = Path(cache) / f"seed{self.seed}-{'x'.join(map(str, self.shape))}-{self.spacing:g}mm"
        self._ensure_cache()
        self.queries: list[tuple[int, int, str]] = []  # (case, label value in its map, text)
        for i in range(self.n_cases):
            meta = json.loads(_case_files(self.root, i)[1].read_text())
            if labels == "weak":
                self.queries += [(i, q["weak"], q["text"]) for q in meta["queries"]]
            else:
                self.queries += [(i, q["label"], q["sentence"]) for q in meta["truth_queries"]]
        if not self.queries:
            raise InputError(f"no located findings in {self.n_cases} phantom case(s): use more cases")
        self.size = int(size) or 50 * len(self.queries)
        self.by_case: dict[int, list[tuple[int, str]]] = {}
        for case_i, value, text in self.queries:
            self.by_case.setdefault(case_i, []).append((value, text))
        from monai.transforms import Compose, RandScaleIntensity, RandShiftIntensity  # heavy import

        # Intensity only: flips/rotations would make "left"/"right" in the sentence false.
        self.augment = (
            Compose([RandScaleIntensity(factors=0.1, prob=0.5), RandShiftIntensity(offsets=0.03, prob=0.5)])
            if augment
            else None
        )

    def _ensure_cache(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        todo = [i for i in range(self.n_cases) if not _case_files(self.root, i)[1].is_file()]
        for n, i in enumerate(todo, 1):
            arrays, meta = build_case(self.seed, i, self.shape, self.spacing)
            tensors, js = _case_files(self.root, i)
            tmp = tensors.with_suffix(".tmp")
            safetensors.numpy.save_file(arrays, str(tmp))
            os.replace(tmp, tensors)
            js.write_text(json.dumps(meta, indent=1) + "\n")  # written last: marks the case complete
            print(f"\rgrounding cache {self.root.name}: built {n}/{len(todo)}", end="", file=sys.stderr)
        if todo:
            print(file=sys.stderr)

    def load_case(self, i: int) -> dict[str, np.ndarray]:
        return safetensors.numpy.load_file(str(_case_files(self.root, i)[0]))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        case_i, value, text = self.queries[index % len(self.queries)]
        arrays = self.load_case(case_i)
        labels = arrays["weak" if self.labels == "weak" else "seg"]
        image = torch.from_numpy(arrays["image"].astype(np.float32))
        if self.coordinates:
            image = with_coordinates(image)
        rng = np.random.default_rng([self.seed, index, 17])
        if self.mode == "volume":
            start = np.zeros(3, int)

            def crop(x):
                return x
        else:
            from monai.transforms import SpatialCrop

            start = self._start(labels, value, arrays["image"][0], rng)
            crop = SpatialCrop(roi_start=start.tolist(), roi_end=(start + np.array(self.patch)).tolist())

        label_map = _plain(crop(torch.from_numpy(labels[None])))  # crop once, then one mask per finding

        def mask(v: int) -> torch.Tensor:
            return (label_map == v).to(torch.uint8).contiguous()

        img, lab = _plain(crop(image)), mask(value)
        extra = {}
        if self.contrast:
            others = [(v, t) for v, t in self.by_case[case_i] if v != value and t != text]
            if others:
                v, t = others[int(rng.integers(len(others)))]
                extra = {"text_other": t, "label_other": mask(v)}
            else:  # a one-finding case: a sentence from another case, which names nothing here
                pool = [(c, t) for c, _, t in self.queries if c != case_i and t != text]
                t = pool[int(rng.integers(len(pool)))][1] if pool else text
                extra = {"text_other": t, "label_other": torch.zeros_like(lab) if pool else lab}
        if self.augment is not None:
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
            img = img.float().clone()
            img[:2] = _plain(self.augment(img[:2])).float()  # SUV and CT only, never the coordinates
        return {"image": img.float().contiguous(), "label": lab, "text": text, "start": start, **extra}

    def _start(self, labels: np.ndarray, value: int, suv: np.ndarray, rng) -> np.ndarray:
        """Crop corner: centred near the named lesion, another lesion, or any body voxel."""
        r = rng.random()
        pool = None
        if r < self.p_target:
            pool = np.flatnonzero(labels == value)
        elif r < self.p_target + self.p_other:
            pool = np.flatnonzero((labels > 0) & (labels != value))
        if pool is None or pool.size == 0:
            pool = np.flatnonzero(suv > 0.01)  # the body (SUV > 0.1)
        centre = np.array(np.unravel_index(pool[rng.integers(pool.size)], labels.shape))
        p = np.array(self.patch)
        centre = centre + rng.integers(-(p // 4), p // 4 + 1)  # the lesion is not always in the middle
        hi = np.maximum(np.array(labels.shape) - p, 0)
        return np.clip(centre - p // 2, 0, hi)

    def eval_cases(self, n: int | None = None):
        """Fresh phantom ``Case`` objects of this split (for ``model.evaluate`` during training)."""
        return [
            make_case(self.seed, i, shape=self.shape, spacing=(self.spacing,) * 3, n_lesions=(2, 4))
            for i in range(n if n is not None else self.n_cases)
        ]

    def score(self, model, device="cpu") -> dict:
        """``model`` scored on :meth:`eval_cases` (``grounding_eval.evaluate_model_on_cases``, one query
        per located lesion): what ``model.evaluate(dataset)`` returns during training."""
        return evaluate_model_on_cases(model, self.eval_cases(), device=device)
