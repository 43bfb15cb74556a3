"""``mmtok compress`` and ``mmtok eval compress``: wired into ``mmtok/cli.py``.

    mmtok compress scene.png --model lightclip-shapes64 --method tcc --keep 0.5 [--out overlay.png] [--json]
    mmtok eval compress --model lightclip-shapes64 --json

``evaluate`` measures every method at every keep fraction in one run: zero-shot accuracy retained
(compressed / full, 128-way object classification of single-object ``shapes`` scenes, ``test`` and
``heldout`` splits), tower images/s at batch 64 (bf16 autocast where it is faster) next to the
uncompressed tower (paired, interleaved runs, median), tokens left, the ideal speed-up
L / (l + (L - l) keep) and the share of it reached; and TCC's density estimate against true ink density on
synthetic documents (Spearman).
Bad input raises ``MmtokError``: ``mmtok.cli.main`` prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import torch

from .. import hub
from ..clip.zeroshot import (
    COLOURS,
    OBJECT_TEMPLATES,
    OBJECTS,
    SHAPES,
    _single_object_scenes,
    _stack,
    class_embeddings,
)
from ..errors import InputError, MmtokError
from ..runtime import autocast, pick_device, use_bf16
from .base import TowerRunner, check_keep
from .baselines import AttentionRank, Pool2x2, RandomDrop
from .document import density_correlation, make_pages
from .explain import ExplainCompressor
from .pipeline import DEFAULT_MODEL, DEFAULT_PREDICTOR, METHODS, CompressPipeline
from .tcc import TCC
from .tome import ToMe

KEEPS = (1.0, 0.75, 0.5, 0.25, 0.1)
# Compressed at the same layer, at the same budgets: TCC / ToMe / random / pool after block 1;
# explainability / attention ranking / random / pool at the input (layer 0).
EVAL_METHODS = (
    "tcc", "tcc-sample", "tcc-drop", "tome", "random@1", "random-merge@1", "pool@1",
    "explain", "attn@0", "random@0", "random-merge@0", "random-drop@0", "pool@0",
)  # fmt: skip
CALIBRATION_TAUS = (0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")


# ----------------------------------------------------------------------------- mmtok compress


def cmd_compress(args: argparse.Namespace) -> int:
    pipe = CompressPipeline(args.model, predictor=args.predictor, device=args.device)
    out = pipe.run(args.image, method=args.method, keep=args.keep, labels=args.labels, top=args.top,
                   layer=args.layer)  # fmt: skip
    overlay = out.pop("overlay")
    if args.out:
        from pathlib import Path

        path = Path(args.out)
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
            path = path.with_suffix(".png")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            overlay.save(path)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot write the overlay ({e})") from e
        out["overlay"] = str(path)
    out["image"] = str(args.image)
    if args.json:
        _print_json(out)
        return 0
    print(
        f"{args.image}: {args.method} kept {out['tokens_kept']}/{out['tokens_total']} tokens "
        f"(keep {out['keep']:g}, "
        + ("at the input)" if out["layer"] == 0 else f"after block {out['layer']})")
        + (f", density {out['density']:.3f}" if "density" in out else "")
    )
    fmt = lambda top: ", ".join(f"{t['label']} {t['prob']:.3f}" for t in top)
    print(f"  before: {fmt(out['top_before'])}")
    print(f"  after:  {fmt(out['top_after'])}")
    print(
        f"  same top-1: {'yes' if out['same_top1'] else 'no'}, embedding cosine {out['cosine']:.4f}; "
        f"tower {out['seconds_full'] * 1e3:.1f} ms full, {out['seconds_compressed'] * 1e3:.1f} ms compressed"
    )
    if args.out:
        print(f"  keep-map -> {out['overlay']}")
    return 0


def _keep_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keep must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--keep must be in (0, 1], got {text}")
    return value


def add_commands(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``compress`` to the ``mmtok`` sub-command parsers."""
    p = sub.add_parser("compress", help="compress an image's tokens inside a CLIP image tower (keep-map)")
    p.add_argument("image", help="image file (PNG, JPEG, ...); resized and centre-cropped to the tower")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"CLIP model (default {DEFAULT_MODEL})")
    p.add_argument("--method", choices=METHODS, default="tcc", help="compressor (default tcc)")
    p.add_argument("--keep", type=_keep_arg, default=0.5, help="fraction of tokens kept, in (0, 1]")
    p.add_argument(
        "--layer", type=int, default=None, help="compress after this many blocks (default: method's)"
    )
    p.add_argument(
        "--labels", nargs="+", default=None, help="zero-shot labels (default: the 128 shapes objects)"
    )
    p.add_argument("--top", type=int, default=3, help="labels shown before/after (default 3)")
    p.add_argument("--predictor", default=DEFAULT_PREDICTOR, help="relevance predictor for --method explain")
    p.add_argument("--out", default=None, help="write the keep-map overlay (PNG)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_compress)
    return p


# ----------------------------------------------------------------------------- evaluation


def eval_compressor(name: str, predictor) -> Any:
    table = {
        "tcc": lambda: TCC(1),
        "tcc-sample": lambda: TCC(1, select="sample"),
        "tcc-drop": lambda: TCC(1, recycle="none"),
        "tome": lambda: ToMe(1),
        "random@1": lambda: RandomDrop(1),
        "random-merge@1": lambda: RandomDrop(1, recycle="merge"),
        "pool@1": lambda: Pool2x2(1),
        "explain": lambda: ExplainCompressor(predictor),
        "attn@0": lambda: AttentionRank(0),
        "random@0": lambda: RandomDrop(0),
        "random-merge@0": lambda: RandomDrop(0, recycle="merge"),
        "random-drop@0": lambda: RandomDrop(0, recycle="none"),
        "pool@0": lambda: Pool2x2(0),
    }
    if name not in table:
        raise InputError(f"unknown method {name!r}: use one of {', '.join(table)}")
    return table[name]()


def ideal_speedup(depth: int, layer: int, keep: float) -> float:
    """L / (l + (L - l) keep): blocks before the compression layer run on every token."""
    return depth / (layer + (depth - layer) * keep)


@torch.no_grad()
def _accuracy(runner, model, images, truth, classes, compressor=None, keep=1.0, batch=250) -> dict:
    preds = []
    for i in range(0, len(images), batch):
        out = runner(images[i : i + batch], compressor, keep)
        emb = torch.nn.functional.normalize(out.pooled.float(), dim=-1)
        preds.append((emb @ classes.T).argmax(-1).cpu())
    pred = torch.cat(preds)
    n_c, n_s = len(COLOURS), len(SHAPES)
    p = {"size": pred // (n_c * n_s), "colour": (pred // n_s) % n_c, "shape": pred % n_s}
    ok = {k: p[k] == truth[k] for k in p}
    out = {f"{k}_acc": ok[k].float().mean().item() for k in p}
    out["object_acc"] = (ok["size"] & ok["colour"] & ok["shape"]).float().mean().item()
    return out | {"_pred": pred}


def _time_pair(runner, images, compressor, keep, warmup: int, runs: int) -> dict:
    """Full and compressed tower, interleaved (order alternating), bf16 where it is faster: median images/s
    of each and the median of the paired time ratios (robust to load from other processes)."""
    full_t, comp_t = [], []
    with torch.inference_mode(), autocast(images.device, None):
        for i in range(warmup + runs):
            order = (False, True) if i % 2 == 0 else (True, False)
            times = {}
            for compressed in order:
                t0 = time.perf_counter()
                runner(images, compressor if compressed else None, keep)
                times[compressed] = time.perf_counter() - t0
            if i >= warmup:
                full_t.append(times[False])
                comp_t.append(times[True])
    b = len(images)
    return {
        "images_per_s_full": b / statistics.median(full_t),
        "images_per_s": b / statistics.median(comp_t),
        "speedup": statistics.median(f / c for f, c in zip(full_t, comp_t, strict=True)),
    }


def evaluate(
    model: str = DEFAULT_MODEL,
    predictor: str = DEFAULT_PREDICTOR,
    n: int = 1000,
    seed: int = 0,
    keeps: tuple[float, ...] = KEEPS,
    methods: tuple[str, ...] = EVAL_METHODS,
    device: str = "cpu",
    batch: int = 64,
    warmup: int = 5,
    runs: int = 20,
    resolutions: tuple[int, ...] = (64, 128),
    extra_keeps: tuple[float, ...] = (0.5,),
    doc_pages: int = 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Every method x keep: accuracy retained, tower speed, tokens left; documents; targets. One run.
    Speed is measured at every keep at the first of ``resolutions`` and at ``extra_keeps`` at the others
    (larger inputs, interpolated position embeddings: speed only)."""
    from ..clip import model as _clip  # noqa: F401  (registers LightCLIP; open_clip: loaded on use)

    for k in keeps:
        check_keep(k)
    dev = pick_device(device)
    clip = hub.load(model, device=dev)
    if getattr(clip, "task", None) != "clip":
        raise MmtokError(f"{model} is a {getattr(clip, 'task', 'model')} model, not a CLIP model")
    pred_model = hub.load(predictor, device=dev) if any(m == "explain" for m in methods) else None
    runner = TowerRunner(clip.clip.visual)
    depth = runner.depth
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)

    # -- accuracy: 128-way zero-shot object classification on single-object scenes
    images, truth = [], {"shape": [], "colour": [], "size": []}
    for split in ("test", "heldout"):
        data = _stack(_single_object_scenes(split, n, seed), ("image", "shape", "colour", "size"))
        slot = data["shape"].argmax(1)
        rows = torch.arange(len(slot))
        images.append(data["image"])
        for k in truth:
            truth[k].append(data[k][rows, slot] - 1)
    images = torch.cat(images).to(dev)
    truth = {k: torch.cat(v) for k, v in truth.items()}
    classes = class_embeddings(
        clip, list(OBJECTS), list(OBJECT_TEMPLATES), lambda t, c: t.format(size=c[0], colour=c[1], shape=c[2])
    )
    log(f"compress eval: {len(images)} scenes, {len(methods)} methods x {len(keeps)} keeps")
    full = _accuracy(runner, clip, images, truth, classes)
    full_pred = full.pop("_pred")
    accuracy: dict[str, dict[str, Any]] = {}
    for name in methods:
        comp = eval_compressor(name, pred_model)
        accuracy[name] = {}
        for keep in keeps:
            acc = _accuracy(runner, clip, images, truth, classes, comp, keep)
            pred = acc.pop("_pred")
            acc["acc_retained"] = (
                acc["object_acc"] / full["object_acc"] if full["object_acc"] else float("nan")
            )
            acc["attr_retained"] = sum(acc[f"{a}_acc"] for a in ("shape", "colour", "size")) / sum(
                full[f"{a}_acc"] for a in ("shape", "colour", "size")
            )
            acc["agreement"] = (pred == full_pred).float().mean().item()
            accuracy[name][str(keep)] = acc
        log(
            f"  {name}: retained "
            + ", ".join(f"{k}: {v['acc_retained']:.3f}" for k, v in accuracy[name].items())
        )

    # -- speed: batch of real scenes, bf16 autocast, paired with the uncompressed tower
    speed: dict[str, dict[str, dict[str, Any]]] = {}
    for j, res in enumerate(resolutions):
        x = images[:batch]
        if res != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
        n_tok = runner.embed(x[:1])[0].shape[1]
        speed[str(res)] = {}
        for name in methods:
            comp = eval_compressor(name, pred_model)
            speed[str(res)][name] = {}
            for keep in keeps if j == 0 else extra_keeps:
                out = runner(x[:2], comp, keep)
                r = _time_pair(runner, x, comp, keep, warmup, runs)
                ideal = ideal_speedup(depth, comp.layer, keep)
                r |= {
                    "tokens": n_tok,
                    "tokens_left": int((out.sizes[0] > 0).sum()),
                    "layer": comp.layer,
                    "ideal": ideal,
                    "of_ideal": r["speedup"] / ideal,
                }
                speed[str(res)][name][str(keep)] = r
            rows = speed[str(res)][name].items()
            log(f"  speed @{res}px {name}: " + ", ".join(f"{k}: {v['speedup']:.2f}x" for k, v in rows))

    # -- documents: TCC's density vs true ink density; tau calibrated on other pages (seed + 1)
    calibration = {}
    cal_pages = make_pages(max(1, doc_pages // 2), seed=seed + 1)
    for tau in CALIBRATION_TAUS:
        calibration[str(tau)] = density_correlation(runner, cal_pages, 0.5, TCC(1, tau=tau))["spearman"]
    best_tau = float(max(calibration, key=calibration.get))
    documents = density_correlation(runner, make_pages(doc_pages, seed=seed), 0.5, TCC(1, tau=best_tau))
    documents |= {"tau": best_tau, "calibration": calibration, "page": "192x256 px, 3x4 crops of 64 + global"}
    log(f"  documents: Spearman {documents['spearman']:.3f} (tau {best_tau}, calibrated on seed {seed + 1})")

    targets = _targets(accuracy, speed, documents)
    meta = {
        "model": model,
        "predictor": predictor if pred_model is not None else None,
        "n_scenes": len(images),
        "depth": depth,
        "batch": batch,
        "warmup": warmup,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "device": str(dev),
        "bf16": use_bf16(dev),
    }
    return {"meta": meta, "full": full, "accuracy": accuracy, "speed": speed, "documents": documents,
            "targets": targets}  # fmt: skip


def _targets(accuracy, speed, documents) -> dict[str, Any]:
    out: dict[str, Any] = {}
    k = "0.5"
    rivals = {
        "tcc": ("random@1", "random-merge@1"),
        "explain": ("random@0", "random-merge@0", "random-drop@0"),
    }
    for name, names in rivals.items():
        if name in accuracy and k in accuracy[name]:
            r = accuracy[name][k]["acc_retained"]
            out[f"{name}_retained_ge_0.96"] = {"value": r, "met": r >= 0.96}
            for rival in names:
                if rival in accuracy:
                    rr = accuracy[rival][k]["acc_retained"]
                    out[f"{name}_beats_{rival}"] = {"value": [r, rr], "met": r > rr}
    for res, table in speed.items():
        for name, rows in table.items():
            if k in rows:
                v = rows[k]["of_ideal"]
                out[f"speed@{res}px/{name}_ge_0.8_ideal"] = {"value": v, "met": v >= 0.8}
    if documents:
        out["documents_spearman_ge_0.8"] = {
            "value": documents["spearman"],
            "met": documents["spearman"] >= 0.8,
        }
    return out


def flatten(result: dict[str, Any]) -> dict[str, Any]:
    """The evaluation as flat ``key: number`` pairs (what ``mmtok eval compress`` prints)."""
    flat: dict[str, Any] = {f"full/{k}": v for k, v in result["full"].items()}
    for name, rows in result["accuracy"].items():
        for keep, acc in rows.items():
            for key in ("acc_retained", "object_acc", "agreement", "attr_retained"):
                flat[f"{name}@{keep}/{key}"] = acc[key]
    for res, table in result["speed"].items():
        for name, rows in table.items():
            for keep, r in rows.items():
                for key in (
                    "images_per_s",
                    "images_per_s_full",
                    "speedup",
                    "ideal",
                    "of_ideal",
                    "tokens_left",
                ):
                    flat[f"speed{res}/{name}@{keep}/{key}"] = r[key]
    for key in ("spearman", "spearman_budget", "median_page_spearman", "tau", "crops"):
        flat[f"documents/{key}"] = result["documents"][key]
    for key, t in result["targets"].items():
        flat[f"target/{key}"] = "met" if t["met"] else "NOT met"
    return flat


def eval_compress(args: argparse.Namespace) -> dict:
    """``mmtok eval compress``: ``evaluate`` for the parsed ``mmtok eval`` arguments -> {name: metrics}."""
    if args.model and len(args.model) != 1:
        raise MmtokError("eval compress needs exactly one --model (e.g. --model lightclip-shapes64)")
    name = args.model[0] if args.model else DEFAULT_MODEL
    result = evaluate(
        model=name, n=args.n or 1000, seed=args.seed, device=args.device, progress=not args.json
    )
    return {name: flatten(result)}
