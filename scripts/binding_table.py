"""Tabulate `mmtok eval generation --json` results side by side, with the binding diagnostics.

Each argument is LABEL=PATH of a JSON file written by `mmtok eval generation --model M --json`
(one model per file). The table has one block per prompt group and one column per model, so a
fine-tuning experiment (e.g. the two-object data run against its control) reads at a glance:

    python scripts/binding_table.py "shipped=runs/eval-a.json" "2-object data=runs/eval-b.json" \
        --out benchmarks/results/xar_binding.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GROUPS = ("seen/1obj", "heldout/1obj", "seen/2obj", "heldout/2obj", "seen/3obj")
ROWS = ("exact", "swapped", "shape", "colour", "size", "place", "count", "anywhere", "all_anywhere")


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    lo, hi = entry["ci95"]
    return f"{100 * entry['rate']:.1f}% ({100 * lo:.0f}-{100 * hi:.0f})"


def table(results: dict[str, dict]) -> str:
    labels = list(results)
    lines = ["| group | figure | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for group in GROUPS:
        for row in ROWS:
            cells = [_cell(results[k].get(group, {}).get(row)) for k in labels]
            if all(c == "-" for c in cells):
                continue
            lines.append(f"| {group} | {row} | " + " | ".join(cells) + " |")
    lines.append("| all | judge-FID | " + " | ".join(f"{results[k]['judge_fid']:.1f}" for k in labels) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=PATH of an `mmtok eval generation --json` file")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    results = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            print(f"error: {spec!r} is not LABEL=PATH of an existing file", file=sys.stderr)
            return 2
        data = json.loads(Path(path).read_text())
        if len(data) != 1:
            print(f"error: {path} holds {len(data)} models; pass one per file", file=sys.stderr)
            return 2
        results[label] = next(iter(data.values()))
    text = table(results)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
