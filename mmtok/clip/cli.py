"""``mmtok clip classify`` and ``mmtok clip search``: wired into ``mmtok/cli.py`` by ``add_commands(sub)``.

Handlers return an exit code; ``MmtokError`` (bad image, empty label list, unknown model ...) propagates
to ``mmtok.cli.main``, which prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from .pipeline import DEFAULT_MODEL


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")


def cmd_clip_classify(args: argparse.Namespace) -> int:
    from .pipeline import ClipPipeline

    pipe = ClipPipeline(args.model, device=args.device)
    results = pipe.classify(args.images, args.labels, top=args.top)
    if args.json:
        _print_json({"model": args.model, "results": results})
        return 0
    for r in results:
        others = "  ".join(f"{label}: {p:.3f}" for label, p in r["scores"].items())
        print(f"{r['file']}: {r['label']} ({r['score']:.3f})    [{others}]")
        if not r["familiar"]:  # the softmax names a label anyway: say the answer means little
            print(f"  warning: {r['file']} looks unlike the training images (familiarity "
                  f"{r['familiarity']:.2f} < {r['familiar_threshold']:.2f}); the label is a guess",
                  file=sys.stderr)  # fmt: skip
    return 0


def cmd_clip_search(args: argparse.Namespace) -> int:
    from .pipeline import ClipPipeline

    pipe = ClipPipeline(args.model, device=args.device)
    found = pipe.search(args.images, args.text, top=args.top, use_cache=not args.no_cache)
    if args.json:
        _print_json({"model": args.model, "text": args.text, **found})
        return 0
    for r in found["results"]:
        print(f"{r['score']:.4f}  {r['path']}")
    for s in found["skipped"]:
        print(f"skipped: {s['error']}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``clip`` (with ``classify`` and ``search``) to the ``mmtok`` sub-command parsers."""
    clip = sub.add_parser("clip", help="zero-shot classification and text search with a CLIP model")
    commands = clip.add_subparsers(dest="clip_command", metavar="CLIP_COMMAND", required=True)

    p = commands.add_parser("classify", help="pick the best of --labels for each image (zero-shot)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...); resized and centre-cropped")
    p.add_argument("--labels", nargs="+", required=True, help='candidate texts, e.g. "a red circle"')
    p.add_argument("--top", type=int, default=None, help="list only the K most likely labels per image")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"CLIP model name or folder (default {DEFAULT_MODEL})"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_clip_classify)

    p = commands.add_parser("search", help="rank a folder of images by similarity to a text")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--text", required=True, help='the query, e.g. "a small green star"')
    p.add_argument("--top", type=int, default=5, help="how many paths to return (default 5)")
    p.add_argument("--no-cache", action="store_true", help="embed every image again, ignore the cache")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"CLIP model name or folder (default {DEFAULT_MODEL})"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_clip_search)
    return clip


def eval_clip(args: argparse.Namespace) -> dict:
    """``mmtok eval clip``: ``zeroshot.evaluate_clip`` for the parsed ``mmtok eval`` arguments (``--model``
    repeatable, ``--n``, ``--device``, ``--seed``, ``--write``, ``--json``); returns {name: metrics}."""
    from .zeroshot import evaluate_clip

    return evaluate_clip(
        names=args.model,
        n=args.n or 1000,
        device=args.device,
        seed=args.seed,
        progress=not args.json,
        write=args.write,
    )
