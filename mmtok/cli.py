"""The ``mmtok`` command. Thin: parse arguments, call a pipeline, print or write.

Error policy: ``MmtokError`` -> one line on stderr, exit 2, no traceback; argparse usage errors
also exit 2; any other exception is a bug -> traceback on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence

from . import __version__
from .batch import add_commands as add_batch_commands
from .clip.cli import add_commands as add_clip_commands
from .clip.cli import eval_clip
from .compression.cli import add_commands as add_compress_commands
from .compression.cli import eval_compress
from .data.shapes import vocabulary
from .errors import MmtokError
from .eval.generation import evaluate_generation
from .eval.judge import evaluate_judges
from .eval.tokenizer import DEFAULT_N, evaluate_tokenizer
from .generation.pipeline import GenerationPipeline
from .grounding.cli import add_commands as add_grounding_commands
from .grounding.cli import eval_grounding, eval_weaklabel
from .hub import list_models
from .runtime import pick_device
from .tokenizers.pipeline import TokenizePipeline
from .train.trainer import train_from_config

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=True, default=str) + "\n")


# ----------------------------------------------------------------------------- commands


# Everything `mmtok eval` can measure (the parser's choices and cmd_eval's branches must agree).
EVAL_TARGETS = ("judge", "tokenizer", "generation", "clip", "grounding", "weaklabel", "compress")


def cmd_models(args: argparse.Namespace) -> int:
    models = list_models()
    if args.json:
        _print_json({"models": models})
        return 0
    if not models:
        print("no named checkpoints found (looked in $MMTOK_WEIGHTS or weights/)")
        return 0
    rows = [("name", "task", "class", "size", "source")]
    rows += [(m["name"], m["task"], m["class"], f"{m['size_mb']:.1f} MB", m["source"]) for m in models]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    result = train_from_config(
        args.config,
        overrides=args.overrides,
        max_steps=args.max_steps,
        resume=args.resume,
        out=args.out,
        export=args.export,
    )
    if args.json:
        _print_json(result)
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    pipe = TokenizePipeline(args.model, device=args.device)
    results = pipe.run_files(args.images, out=args.out)
    if args.json:
        _print_json({"model": args.model, "images": results})
        return 0
    for r in results:
        shape = "x".join(map(str, r["token_shape"]))
        print(f"{r['file']}: PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  tokens {shape}", end="")
        print(f"  -> {r['reconstruction']}" if "reconstruction" in r else "")
        if "codes" in r:
            for row in r["codes"]:
                print("   " + " ".join(f"{c:5d}" for c in row))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    pipe = GenerationPipeline(args.model, device=args.device)
    progress, bars = None, []
    if not args.json:
        from tqdm.auto import tqdm

        def progress(done: int, total: int) -> None:
            if not bars:  # made at the first entity: a refused setting leaves no bar behind its error
                bars.append(tqdm(total=total, desc="generating", unit="entity", leave=False))
            bars[0].total = total
            bars[0].n = done
            bars[0].refresh()

    try:
        result = pipe(
            prompt=args.prompt, class_label=args.class_label, n=args.n, seed=args.seed, steps=args.steps,
            cfg=args.cfg, sampler=args.sampler, progress=progress,
        )  # fmt: skip
    finally:
        for bar in bars:
            bar.close()
    manifest = GenerationPipeline.save(result, args.out)
    if args.json:
        _print_json(manifest)
    else:
        print(f"{len(result.images)} images in {result.seconds:.2f} s -> {args.out}/ (manifest.json)")
        if result.note:
            print(f"note: {result.note}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:  # apps/ is outside the package (pyproject.toml's import contracts allow only this import)
        from apps.gradio_app import launch
    except ImportError as e:  # an install without the apps package (not an editable checkout)
        raise MmtokError(f"the web UI is not installed with this copy of mmtok: {e}") from e
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"mmtok serve: listening on {args.host}: anyone reaching it can use the UI", file=sys.stderr)
    launch(host=args.host, port=args.port, device=str(pick_device(args.device)))
    return 0


def _one_model(args: argparse.Namespace, example: str) -> str:
    if not args.model or len(args.model) != 1:
        raise MmtokError(f"eval {args.what} needs exactly one --model (e.g. --model {example})")
    return args.model[0]


def cmd_eval(args: argparse.Namespace) -> int:
    if args.what == "tokenizer":
        name = _one_model(args, "kl-f8-64")
        result = {
            name: evaluate_tokenizer(
                name,
                n=args.n or DEFAULT_N,
                device=args.device,
                seed=args.seed,
                progress=not args.json,
                write=args.write,
            )
        }
    elif args.what == "generation":
        name = _one_model(args, "xar-shapes64")
        result = {
            name: evaluate_generation(
                name,
                n=args.n or 256,
                seed=args.seed,
                steps=args.steps,
                cfg=args.cfg,
                device=args.device,
                progress=not args.json,
                write=args.write,
            )  # fmt: skip
        }
    elif args.what == "clip":
        result = eval_clip(args)
    elif args.what == "grounding":
        result = eval_grounding(args)
    elif args.what == "weaklabel":
        result = {"weaklabel": eval_weaklabel(args)}
    elif args.what == "compress":
        result = eval_compress(args)
    elif args.what == "judge":
        result = evaluate_judges(
            names=args.model,
            n=args.n or 2000,
            device=args.device,
            seed=args.seed,
            progress=not args.json,
            write=args.write,
        )
    else:  # argparse restricts the choices
        raise MmtokError(f"unknown evaluation {args.what!r}")
    if args.json:
        _print_json(result)
    else:
        for name, metrics in result.items():
            print(name)
            for key, value in metrics.items():
                if isinstance(value, dict) and "rate" in value:  # a proportion with its interval
                    lo, hi = value["ci95"]
                    value = f"{value['rate']:.4f} (95% CI {lo:.3f}-{hi:.3f}, n={value['n']})"
                elif isinstance(value, dict):
                    value = ", ".join(
                        f"{k} {v['rate']:.3f}" if isinstance(v, dict) and "rate" in v else f"{k} {v}"
                        for k, v in value.items()
                    )
                print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmtok", description="Multimodal generation and grounding on shared tokenizers."
    )
    parser.add_argument("--version", action="version", version=f"mmtok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list named checkpoints (task, size, source)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set optim.lr=3e-4 --set train.seed=2 (repeatable; "
        "dotted keys, YAML values; applied after base: and before validation)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="override optim.max_steps")
    p.add_argument("--resume", default=None, help="checkpoint path, or 'latest' in the run folder")
    p.add_argument("--out", default=None, help="run folder (default: runs/<name>)")
    p.add_argument(
        "--export", default=None, help="export folder for the final EMA model (default: weights/<name>)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "generate", help="generate images from a prompt or a class (writes PNGs + manifest)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="prompts of the text-conditional models (the shapes test bed's grammar), e.g.\n"
        '  "a large red circle in the centre and a small blue star above it"\n'
        "words they know (any other word is ignored, and the result carries a note naming it):\n"
        + textwrap.fill(" ".join(vocabulary()), 100, initial_indent="  ", subsequent_indent="  "),
    )  # fmt: skip
    p.add_argument("--model", required=True, help="generator name (see `mmtok models`)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text prompt (text-conditional models)")
    what.add_argument("--class", dest="class_label", type=int, help="class index (class-conditional models)")
    p.add_argument("-n", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="flow steps per entity (default 20)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    p.add_argument(
        "--sampler",
        choices=["euler_maruyama", "euler"],
        default=None,
        help="flow sampler (default: the model's own: euler_maruyama for xAR/DiT, euler for ECAR)",
    )
    p.add_argument("--out", default="generated", help="output folder (default: generated/)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("tokenize", help="reconstruct images through an image tokenizer (PSNR/SSIM, codes)")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...); sides cropped to multiples of f")
    p.add_argument("--model", required=True, help="tokenizer name or folder (see `mmtok models`)")
    p.add_argument("--out", default=None, help="folder for <name>.recon.png (and <name>.codes.png)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_tokenize)

    p = sub.add_parser("serve", help="the web UI on the shipped weights (http://127.0.0.1:7860)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N or mps")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("eval", help="measure a shipped model")
    p.add_argument("what", choices=list(EVAL_TARGETS), help="what to evaluate")
    p.add_argument("--model", action="append", default=None, help="model name (repeatable; default: all)")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="samples: per test bed (judge 2000, tokenizer 2000), per prompt group or class "
        "(generation 256), phantom cases (weaklabel 200)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="generation: flow steps per entity")
    p.add_argument("--cfg", type=float, default=3.0, help="generation: guidance scale")
    p.add_argument("--write", action="store_true", help="record the figures in the model's card")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_eval)

    add_clip_commands(sub)  # clip classify / clip search
    add_compress_commands(sub)  # compress (keep-map)
    add_grounding_commands(sub)  # phantom, weaklabel, suv, ground
    add_batch_commands(sub)  # batch (JSONL / CSV / folder, by rank)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):  # undecodable bytes reach Python as lone surrogates
        try:
            str(arg).encode("utf-8")
        except UnicodeEncodeError:
            print(f"mmtok: error: argument {i + 1} is not valid UTF-8 text", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except MmtokError as e:
        print(f"mmtok: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mmtok: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not bad input: keep the traceback for the report
        traceback.print_exc()
        print("mmtok: internal error (a bug): please report it with the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
