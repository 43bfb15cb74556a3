"""Speed of mmtok's CLIP text tokenizer against open_clip's own, in one run, on the same captions.

    python benchmarks/bench_text_tokenizer.py [--n 10000] [--repeats 3]

Three cases, each timed for both tokenizers on the same list of captions:

- ``cold``: fresh tokenizer instances (empty caches) encode the captions once;
- ``warm``: the same instances encode the same captions again (a second epoch);
- ``new captions``: the same instances encode a different caption list (steady state of training:
  words repeat, captions mostly don't).

Every case checks that the ids are identical. Writes ``benchmarks/results/text_tokenizer.json`` and
``text_tokenizer.md``; exits 1 if any ids differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from mmtok.tokenizers import text as text_module
from mmtok.tokenizers.text import TextTokenizer

# A small caption grammar: enough nouns, colours, relations, synonyms, numbers, casing and punctuation
# that captions rarely repeat, plus some unicode and html entities as web captions have them.
NOUNS = """cube sphere ball cylinder cone pyramid dog puppy cat kitten horse pony bird car automobile
truck bicycle bike boat chair stool table desk lamp vase cup mug bottle book apple banana pizza sandwich
tree flower house bridge tower man woman child girl boy guitar laptop phone clock umbrella kite
skateboard""".split()
COLOURS = """red green blue yellow purple violet orange pink brown black white grey gray crimson teal
turquoise golden silver beige navy olive maroon""".split()
SIZES = "small tiny little large big huge giant medium-sized miniature tall".split()
MATERIALS = "wooden metal metallic glass plastic rubber stone marble paper".split()
VERBS = "sitting standing lying resting floating parked hanging leaning".split()
RELATIONS = """on the left of|to the left of|on the right of|to the right of|above|below|under|on top of
|behind|in front of|next to|beside|near|far from|inside|between""".replace("\n", "").split("|")
PLACES = """in a park|on a beach|in the kitchen|at night|in the snow|on a wooden floor|in a busy street
|under a cloudy sky|at sunset|in a studio|on a white background""".replace("\n", "").split("|")
STARTS = ["a photo of", "an image of", "a picture of", "a close-up of", "a rendering of", "there is", ""]
UNICODE = ["café", "naïve", "über-cool", "jalapeño", "crème brûlée", "“quoted”", "a—dash", "😀", "北京"]


def _thing(rng: random.Random, count: int) -> str:
    words = [str(count) if count > 1 or rng.random() < 0.2 else rng.choice(["a", "the", "one"])]
    for pool, p in ((SIZES, 0.4), (COLOURS, 0.8), (MATERIALS, 0.3)):
        if rng.random() < p:
            words.append(rng.choice(pool))
    words.append(rng.choice(NOUNS) + ("s" if count > 1 else ""))
    return " ".join(words)


def make_captions(n: int, seed: int) -> list[str]:
    """``n`` varied, deterministic captions."""
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        parts = [rng.choice(STARTS), _thing(rng, rng.choice([1, 1, 1, 2, 3, rng.randint(4, 120)]))]
        for _ in range(rng.choice([0, 1, 1, 2])):
            parts += [rng.choice(RELATIONS), _thing(rng, rng.choice([1, 1, 2]))]
        if rng.random() < 0.5:
            parts.append(rng.choice(VERBS) + " " + rng.choice(PLACES))
        if rng.random() < 0.3:
            parts[-1] += rng.choice([f", {rng.uniform(1, 99):.1f} cm tall", f" ({rng.randint(1900, 2025)})"])
        if rng.random() < 0.1:
            parts.append(
                rng.choice([f"#{rng.randint(1, 999)}", f"{rng.randint(1, 100)}%", "it's great", "&amp; more"])
            )
        if rng.random() < 0.06:
            parts.append(rng.choice(UNICODE))
        caption = " ".join(p for p in parts if p) + rng.choice(["", "", ".", "!", "...", " ?"])
        case = rng.random()
        caption = caption.upper() if case < 0.05 else caption.capitalize() if case < 0.5 else caption
        captions.append(caption)
    return captions


def _timed(fn, captions: list[str]):
    start = time.perf_counter()
    ids = fn(captions)
    return time.perf_counter() - start, ids


def run(n: int, repeats: int, seed: int) -> dict:
    captions, new_captions = make_captions(n, seed), make_captions(n, seed + 1)
    times: dict[str, dict[str, list[float]]] = {}
    build: dict[str, list[float]] = {"open_clip": [], "mmtok": []}
    identical = True
    for _ in range(repeats):
        start = time.perf_counter()
        theirs = SimpleTokenizer()  # what open_clip.tokenize() calls
        build["open_clip"].append(time.perf_counter() - start)
        text_module._clip_vocab.cache_clear()  # ours shares the vocabulary per process: reload it
        start = time.perf_counter()
        ours = TextTokenizer.clip()
        build["mmtok"].append(time.perf_counter() - start)
        for case, batch in (("cold", captions), ("warm", captions), ("new captions", new_captions)):
            t_theirs, ids_theirs = _timed(theirs, batch)
            t_ours, tokenized = _timed(ours, batch)
            identical &= torch.equal(ids_theirs, tokenized.input_ids)
            times.setdefault(case, {"open_clip": [], "mmtok": []})
            times[case]["open_clip"].append(t_theirs)
            times[case]["mmtok"].append(t_ours)
    cases = {}
    for case, t in times.items():
        theirs, ours = statistics.median(t["open_clip"]), statistics.median(t["mmtok"])
        cases[case] = {
            "open_clip_captions_per_s": round(n / theirs),
            "mmtok_captions_per_s": round(n / ours),
            "speedup": round(theirs / ours, 2),
        }
    unique_words = len({w for c in captions for w in c.lower().split()})
    return {
        "benchmark": "CLIP BPE text tokenizer: mmtok TextTokenizer.clip() vs open_clip SimpleTokenizer",
        "n_captions": n,
        "unique_captions": len(set(captions)),
        "unique_words": unique_words,
        "repeats": repeats,
        "statistic": "median over repeats",
        "ids_identical": identical,
        "build_seconds": {k: round(statistics.median(v), 3) for k, v in build.items()},
        "cases": cases,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"# Text tokenizer: mmtok vs open_clip ({result['n_captions']:,} captions)",
        "",
        f"{result['unique_captions']:,} unique captions, {result['unique_words']:,} unique words; "
        f"{result['statistic']} ({result['repeats']}); ids identical: **{result['ids_identical']}**.",
        "",
        "| case | open_clip captions/s | mmtok captions/s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for case, c in result["cases"].items():
        theirs, ours = c["open_clip_captions_per_s"], c["mmtok_captions_per_s"]
        lines.append(f"| {case} | {theirs:,} | {ours:,} | {c['speedup']}x |")
    b = result["build_seconds"]
    lines += [
        "",
        f"Building a tokenizer: open_clip {b['open_clip']} s, mmtok {b['mmtok']} s (vocabulary load).",
    ]
    lines += [
        "",
        "Reproduce: `python benchmarks/bench_text_tokenizer.py --n {}`".format(result["n_captions"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="captions per case")
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh tokenizer pairs; the median is reported"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    result = run(args.n, args.repeats, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_tokenizer.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "text_tokenizer.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0 if result["ids_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
