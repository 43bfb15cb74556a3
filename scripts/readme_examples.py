"""The example grids in the README: each shipped shapes generator on the same prompts and seeds.

    python scripts/readme_examples.py [--models xar-shapes64 dit-shapes64] [--out docs/img]

Writes ``<out>/examples-<model>.png``: one row per prompt, 4 samples (seeds 0-3) per row, upscaled 2x
(nearest) so 64x64 images are visible, through exactly what ``mmtok generate`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from mmtok.errors import MmtokError
from mmtok.generation.pipeline import GenerationPipeline

PROMPTS = [
    "a large red circle in the center",
    "a small blue star in the top left corner",
    "a large green heart in the bottom right corner and a small yellow square in the top left corner",
    "a small purple triangle in the top middle and a large orange ring in the bottom middle",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["xar-shapes64"])
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        try:
            pipe = GenerationPipeline(name)
        except MmtokError as e:
            print(f"{name}: {e}")
            continue
        rows = []
        for prompt in PROMPTS:
            result = pipe(prompt=prompt, n=args.n, seed=0)
            tiles = [((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
                     for img in result.images]  # fmt: skip
            rows.append(
                np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1)
            )
        grid = np.concatenate(rows, 0).repeat(2, 0).repeat(2, 1)
        path = args.out / f"examples-{name}.png"
        Image.fromarray(grid).save(path)
        print(path)


if __name__ == "__main__":
    main()
