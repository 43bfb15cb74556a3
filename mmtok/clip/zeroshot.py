"""Zero-shot evaluation of a CLIP model on the offline test beds.

- **shapes, one object per scene**: a zero-shot classifier over all 128 objects ("a small red star"),
  each class embedding the mean of its prompts over the nine positions (prompt ensembling, as open_clip's
  ``build_zero_shot_classifier``). Shape / colour / size accuracy come from the class probabilities
  summed over the other attributes; ``object_acc`` is the full combination. ``test`` has only seen
  combinations, ``heldout`` only held-out ones (e.g. red star: never in training).
- **retrieval**: image->text and text->image recall@1/5/10 on 1,000 held-out scenes (1-3 objects, their
  own captions), as open_clip's ``get_clip_metrics``.
- **digits**: 10-way zero-shot accuracy on the digits test split, prompts = the caption templates.
- **binding**: on held-out two-object scenes of two colours, the share whose true caption scores above
  the same caption with the two objects' colours swapped (a bag-of-words model scores about 50%).
- **colour-histogram probe**: a logistic regression on 4x4x4 colour histograms, trained on single-object
  training scenes -- the floor a model gets from colour alone (it cannot name unseen combinations).

``evaluate_clip`` runs them all (``mmtok eval clip``) and can record the figures in the model card.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from ..data.shapes import COLOURS, POSITION_WORDS, SHAPES, SIZES

OBJECTS = tuple(itertools.product(SIZES, COLOURS, SHAPES))  # class k = (size, colour, shape)
OBJECT_TEMPLATES = tuple(f"a {{size}} {{colour}} {{shape}} {words[0]}" for words in POSITION_WORDS.values())


@torch.no_grad()
def embed_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Normalised image embeddings [N, E] (fp32, on the model's device)."""
    chunks = [
        model.encode_image(images[i : i + batch_size])["embeds"] for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).float()


@torch.no_grad()
def embed_texts(model, texts: list[str], batch_size: int = 512) -> torch.Tensor:
    """Normalised text embeddings [N, E]."""
    chunks = [
        model.encode_text(texts[i : i + batch_size])["embeds"] for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(chunks).float()


@torch.no_grad()
def class_embeddings(model, classnames: list[Any], templates: list[str], fmt) -> torch.Tensor:
    """Prompt-ensembled class embeddings [C, E]: the normalised mean over ``templates`` per class.
    ``fmt(template, classname)`` fills one prompt."""
    texts = [fmt(t, c) for c in classnames for t in templates]
    embeds = embed_texts(model, texts).view(len(classnames), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(embeds, dim=-1)


@torch.no_grad()
def embed_pairs(model, dataset, device="cpu", batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and caption embeddings of every item of ``dataset`` (aligned rows)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    images, texts = [], []
    for batch in loader:
        images.append(embed_images(model, batch["image"].to(device)))
        texts.append(embed_texts(model, list(batch["caption"])))
    return torch.cat(images), torch.cat(texts)


def retrieval_metrics(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, ks=(1, 5, 10)
) -> dict[str, float]:
    """Recall@k in both directions for aligned pairs (row i of each is pair i); also the mean R@1."""
    sims = image_embeds.float() @ text_embeds.float().T
    truth = torch.arange(len(sims), device=sims.device)
    out = {}
    for name, logits in (("image_to_text", sims), ("text_to_image", sims.T)):
        # Rank of the true item = how many score strictly higher (ties count in its favour).
        rank = (logits > logits[truth, truth][:, None]).sum(1)
        for k in ks:
            out[f"{name}_R@{k}"] = (rank < k).float().mean().item()
    out["mean_R@1"] = (out["image_to_text_R@1"] + out["text_to_image_R@1"]) / 2
    return out


def _single_object_scenes(split: str, n: int, seed: int):
    from ..data import build_dataset

    return build_dataset("shapes", split, size=n, seed=seed, min_objects=1, max_objects=1, resolution=64)


def _stack(dataset, keys=("image",)) -> dict[str, Any]:
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset), shuffle=False)))
    return {k: batch[k] for k in keys}


@torch.no_grad()
def shapes_zero_shot(model, split: str = "heldout", n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Zero-shot object classification of single-object scenes (see the module docstring)."""
    data = _stack(_single_object_scenes(split, n, seed), ("image", "shape", "colour", "size"))
    classes = class_embeddings(
        model,
        list(OBJECTS),
        list(OBJECT_TEMPLATES),
        lambda t, c: t.format(size=c[0], colour=c[1], shape=c[2]),
    )
    logits = model.logit_scale.exp().float() * embed_images(model, data["image"]) @ classes.T
    probs = logits.softmax(-1).view(len(logits), len(SIZES), len(COLOURS), len(SHAPES)).cpu()
    slot = data["shape"].argmax(1)  # the one occupied slot
    rows = torch.arange(len(slot))
    truth = {k: data[k][rows, slot] - 1 for k in ("size", "colour", "shape")}
    pred = {
        "size": probs.sum((2, 3)).argmax(1),
        "colour": probs.sum((1, 3)).argmax(1),
        "shape": probs.sum((1, 2)).argmax(1),
    }
    ok = {k: pred[k] == truth[k] for k in pred}
    out = {f"{k}_acc": ok[k].float().mean().item() for k in ("shape", "colour", "size")}
    out["object_acc"] = (ok["shape"] & ok["colour"] & ok["size"]).float().mean().item()
    out["shape_colour_acc"] = (ok["shape"] & ok["colour"]).float().mean().item()
    return out


@torch.no_grad()
def binding_test(model, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Attribute binding (see the module docstring): ``colour_swap_acc`` over ``n`` scenes."""
    from ..data.shapes import ShapesDataset

    data = ShapesDataset("heldout", size=8 * n, min_objects=2, max_objects=2, seed=seed, negatives=True)
    items = []
    for i in range(len(data)):
        scene, _ = data.scene(i)
        if scene.objects[0].colour != scene.objects[1].colour:  # its negative swaps the two colours
            items.append(data[i])
            if len(items) == n:
                break
    device = next(model.parameters()).device
    images = embed_images(model, torch.stack([it["image"] for it in items]).to(device))
    true = (images * embed_texts(model, [it["caption"] for it in items])).sum(-1)
    swapped = (images * embed_texts(model, [it["negative"] for it in items])).sum(-1)
    return {"colour_swap_acc": float((true > swapped).float().mean()), "n": len(items)}


@torch.no_grad()
def digits_zero_shot(model) -> dict[str, float]:
    """10-way zero-shot accuracy on the digits test split (prompts: every caption template)."""
    from ..data.digits import CAPTION_TEMPLATES, NUMBER_WORDS, DigitsDataset

    data = _stack(DigitsDataset("test"), ("image", "label"))
    classes = class_embeddings(
        model, list(range(10)), list(CAPTION_TEMPLATES), lambda t, d: t.format(w=NUMBER_WORDS[d], n=d)
    )
    pred = (embed_images(model, data["image"]) @ classes.T).argmax(1).cpu()
    return {"accuracy": (pred == data["label"]).float().mean().item()}


def colour_histogram_probe(n_train: int = 3000, n_eval: int = 1000, seed: int = 0) -> dict[str, float]:
    """Sanity floor: logistic regression on 4x4x4 colour histograms of single-object scenes, one per
    attribute, trained on ``train`` and scored on ``test`` and ``heldout`` (model-independent)."""
    from sklearn.linear_model import LogisticRegression

    def features(split, n, seed):
        data = _stack(_single_object_scenes(split, n, seed), ("image", "shape", "colour", "size"))
        bins = ((data["image"] + 1) / 2 * 3.999).long().clamp(0, 3)  # 4 levels per channel
        codes = (bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]).flatten(1)
        hist = torch.zeros(len(codes), 64).scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float))
        slot = data["shape"].argmax(1)
        rows = torch.arange(len(slot))
        return (hist / codes.shape[1]).sqrt().numpy(), {
            k: (data[k][rows, slot] - 1).numpy() for k in ("shape", "colour", "size")
        }

    x_train, y_train = features("train", n_train, seed + 1)
    out: dict[str, float] = {}
    evals = {split: features(split, n_eval, seed) for split in ("test", "heldout")}
    preds: dict[str, dict[str, np.ndarray]] = {split: {} for split in evals}
    for attr in ("shape", "colour", "size"):
        probe = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, y_train[attr])
        for split, (x, y) in evals.items():
            preds[split][attr] = probe.predict(x) == y[attr]
            out[f"probe_{split}/{attr}_acc"] = float(preds[split][attr].mean())
    for split in evals:
        p = preds[split]
        out[f"probe_{split}/object_acc"] = float((p["shape"] & p["colour"] & p["size"]).mean())
    return out


def evaluate_clip(
    names: list[str] | None = None,
    n: int = 1000,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    write: bool = False,
    probe: bool = True,
) -> dict[str, dict[str, float]]:
    """Every metric above for each named CLIP model (``mmtok eval clip``); ``write`` records them in the
    model's ``metrics.json`` and README."""
    from .. import hub
    from ..data import build_dataset
    from ..errors import MmtokError
    from ..runtime import pick_device
    from . import model as _model  # noqa: F401  (registers LightCLIP for hub.load)

    device = pick_device(device)
    names = names or [m["name"] for m in hub.list_models() if m["task"] == "clip"]
    if not names:
        raise MmtokError("no CLIP models found: train one with `mmtok train configs/lightclip-shapes64.yaml`")
    floor = colour_histogram_probe(seed=seed) if probe else {}
    results: dict[str, dict[str, float]] = {}
    for name in names:
        model = hub.load(name, device=device)
        if getattr(model, "task", None) != "clip":
            raise MmtokError(f"{name} is a {getattr(model, 'task', 'model')} model, not a CLIP model")
        metrics: dict[str, float] = {}
        for split in ("test", "heldout"):
            if progress:
                print(f"evaluating {name}: shapes/{split} zero-shot ({n} single-object scenes)", flush=True)
            for key, value in shapes_zero_shot(model, split, n, seed).items():
                metrics[f"shapes_{split}/{key}"] = value
        if progress:
            print(f"evaluating {name}: retrieval on {n} held-out scenes, digits zero-shot", flush=True)
        pairs = build_dataset("shapes", "heldout", size=n, seed=seed + 1, resolution=64)
        image_embeds, text_embeds = embed_pairs(model, pairs, device=device)
        metrics |= {
            f"retrieval_heldout/{k}": v for k, v in retrieval_metrics(image_embeds, text_embeds).items()
        }
        metrics |= {f"digits_test/{k}": v for k, v in digits_zero_shot(model).items()}
        metrics |= {f"binding_heldout/{k}": v for k, v in binding_test(model, n, seed).items()}
        metrics |= floor
        results[name] = metrics
        if write:
            command = f"mmtok eval clip --model {name} --n {n} --seed {seed} --json"
            hub.record_metrics(name, metrics, command, title="Zero-shot evaluation")
    return results
