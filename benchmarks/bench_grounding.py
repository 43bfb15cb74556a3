"""Seconds per case of the whole grounding pipeline on the CPU: ConTEXTual Net 3D against the image-only
DynUNet, in the same run, with peak memory.

    python benchmarks/bench_grounding.py [--cases 3] [--threads 1]

The models are the architectures of ``configs/contextual3d-phantom/contextual3d-phantom.yaml`` and
``experiments/configs/dynunet3d-phantom.yaml`` (random weights: speed does not depend on training; the shipped
weights are used instead when ``--shipped`` is given). Each case is a fresh 96 x 96 x 160 phantom at
4 mm written as NIfTI; a timed call is ``mmtok.grounding.pipeline.ground`` on the files: load,
resample, encode the sentence (all-MiniLM-L6-v2, first use of a sentence: uncached), sliding window
with Gaussian blending, post-processing. Each model runs in its own child process so that its peak
resident memory (``ru_maxrss``) is its own. Target: text conditioning costs <= 30% extra time.

Writes ``benchmarks/results/grounding_speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "contextual3d": "configs/contextual3d-phantom/contextual3d-phantom.yaml",
    "image-only": "experiments/configs/dynunet3d-phantom.yaml",
}
SHIPPED = {"contextual3d": "contextual3d-phantom", "image-only": "dynunet3d-phantom"}


def _child(name: str, model: str, cases: list[str], threads: int, queue) -> None:
    import torch

    from mmtok.grounding.pipeline import ground

    torch.set_num_threads(threads)
    times = []
    for i, case in enumerate(cases):
        folder = Path(case)
        # A new sentence every case: the token cache never hides the language model's cost.
        text = f"Hypermetabolic left axillary node number {i}, SUVmax 7.2 (image 98)."
        start = time.perf_counter()
        ground(folder / "SUV.nii.gz", folder / "CTres.nii.gz", text, model=model)
        times.append(time.perf_counter() - start)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"model": name, "seconds": times, "peak_rss_mb": rss_mb})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shipped", action="store_true", help="time the shipped weights instead")
    args = ap.parse_args()

    import torch
    import yaml

    from mmtok import hub
    from mmtok.grounding.phantom import write_phantoms

    work = Path(tempfile.mkdtemp(prefix="bench-grounding-"))
    # Case 0 is a warm-up (imports, first model load); the rest are timed.
    cases = [str(p) for p in write_phantoms(work / "cases", args.cases + 1, seed=4242)]
    models = {}
    for name, config in MODELS.items():
        if args.shipped:
            models[name] = SHIPPED[name]
            continue
        spec = yaml.safe_load((ROOT / config).read_text())["model"]
        torch.manual_seed(0)
        net = hub.model_class(spec["class"])(**spec["kwargs"])
        models[name] = str(hub.save(net, work / "weights" / name))
    ctx = mp.get_context("spawn")
    rows = []
    for name, model in models.items():
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, model, cases, args.threads, queue))
        proc.start()
        result = queue.get()
        proc.join()
        timed = result["seconds"][1:]
        rows.append({"model": name, "weights": model if args.shipped else MODELS[name],
                     "seconds_per_case": statistics.median(timed), "seconds": result["seconds"],
                     "peak_rss_mb": result["peak_rss_mb"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    by = {r["model"]: r for r in rows}
    overhead = by["contextual3d"]["seconds_per_case"] / by["image-only"]["seconds_per_case"] - 1
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": args.threads, "torch": torch.__version__, "cases": args.cases,
            "command": " ".join(["python benchmarks/bench_grounding.py", *sys.argv[1:]])}  # fmt: skip
    record = {"meta": meta, "rows": rows, "text_overhead": overhead, "target_overhead": 0.30}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grounding_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Grounding pipeline speed ({meta['machine']}, {args.threads} thread(s), torch {meta['torch']})",
        "",
        f"Measured by `{meta['command']}`: median of {args.cases} fresh 96x96x160 phantoms (4 mm) per model,",
        "whole pipeline (load, resample, encode the sentence, sliding window, post-processing).",
        "",
        "| model | seconds per case | peak memory (MB) |",
        "|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['seconds_per_case']:.2f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    verdict = "met" if overhead <= 0.30 else "not met"
    lines += ["", f"Text conditioning costs **{overhead:+.1%}** time (target <= +30%: {verdict})."]
    (RESULTS / "grounding_speed.md").write_text("\n".join(lines) + "\n")
    print(f"text overhead {overhead:+.1%}", flush=True)


if __name__ == "__main__":
    main()
