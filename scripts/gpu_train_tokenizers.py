"""Train shipped models side by side on one GPU inside a fixed wall-clock budget.

    python scripts/gpu_train_tokenizers.py --budget 400 --out DIR          # kl-f8-64 + bin-f8-64
    python scripts/gpu_train_tokenizers.py --names xar-shapes64 dit-shapes64 --steps 8000 --eval --out DIR

What it runs is the ordinary ``mmtok train <config of name> --max-steps N`` for ``kl-f8-64`` and
``bin-f8-64`` (both at once: small convnets leave a big GPU mostly idle), then
``mmtok eval tokenizer --model <name> --write --json``. The only thing decided here is N: a 100-step
probe of both configs, run together as the real runs will be, measures seconds per step, and N is
the largest multiple of 100 that fits the remaining budget. The command each model card records
(``--max-steps N``) reproduces the run on any machine; only the wall time differs.
The exported folders, with their logs, are packed as ``DIR/<name>.tar``. A name's config is
``configs/<name>.yaml``, else the stage config of that name in a recipe folder
(``configs/kl-f8-64/kl-f8-64-s1.yaml``), else ``experiments/configs/<name>.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

NAMES = ("kl-f8-64", "bin-f8-64")


def config_path(name: str) -> str:
    """The config file a name trains: a shipped recipe, a stage of a recipe folder, or an experiment."""
    found = [Path("configs") / f"{name}.yaml", *sorted(Path("configs").glob(f"*/{name}.yaml"))]
    found.append(Path("experiments") / "configs" / f"{name}.yaml")
    for path in found:
        if path.is_file():
            return str(path)
    raise SystemExit(f"no config named {name} in configs/, configs/*/ or experiments/configs/")


def launch(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mmtok", *args], stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def wait_all(procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    for name, p in procs.items():
        if p.wait() != 0:
            print(logs[name].read_text()[-4000:])
            raise SystemExit(f"{name} failed with exit code {p.returncode}")


def train_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "train"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=400, help="seconds for the whole script (probe mode)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-steps", type=int, default=40000)
    ap.add_argument("--steps", type=int, default=None, help="skip the probe: train this many steps")
    ap.add_argument("--names", nargs="+", default=list(NAMES), help="config names to train")
    ap.add_argument("--eval", action="store_true", help="run mmtok eval tokenizer --write afterwards")
    ap.add_argument("--part-mb", type=int, default=15, help="split each packed model into parts this big")
    a = ap.parse_args()
    names = a.names
    start = time.time()
    work = Path("/tmp/tok_runs")
    a.out.mkdir(parents=True, exist_ok=True)
    logs = {n: a.out / f"{n}.log" for n in names}

    prepare(names)
    steps = a.steps if a.steps is not None else probe(a, names, work, logs, start)
    train(names, steps, work, logs, start)
    if a.eval:
        evaluate(names, a.out)
    pack(names, a.out, a.part_mb)
    print(f"done at {time.time() - start:.0f} s", flush=True)


def prepare(names) -> None:
    """Build every dataset the configs name once, before the runs start side by side: a generator
    config's ``latents`` data encodes its test bed into the latent cache on first use, and two runs
    must not both build the same cache."""
    code = (
        "import sys\n"
        "from mmtok.data import build_dataset\n"
        "from mmtok.train.config import load_config\n"
        "for path in sys.argv[1:]:\n"
        "    cfg = load_config(path)\n"
        "    for sub in (cfg.data, cfg.eval):\n"
        "        if sub is not None and sub.name == 'latents':\n"
        "            build_dataset(sub.name, sub.split, **sub.kwargs)\n"
    )
    subprocess.run([sys.executable, "-c", code, *[config_path(n) for n in names]], check=True)


def probe(a, names, work: Path, logs: dict[str, Path], start: float) -> int:
    """100 steps of every config at once (log_every 50 -> records at 50 and 100) -> steps that fit."""
    t = time.time()
    procs = {
        n: launch(
            [
                "train",
                config_path(n),
                "--max-steps",
                "100",
                "--out",
                str(work / f"probe-{n}"),
                "--export",
                str(work / f"probe-export-{n}"),
            ],
            logs[n],
        )
        for n in names
    }
    wait_all(procs, logs)
    probe_wall = time.time() - t
    per_step, overhead = {}, {}
    for n in names:
        rec = {r["step"]: r["seconds"] for r in train_records(work / f"probe-{n}")}
        per_step[n] = (rec[100] - rec[50]) / 50
        overhead[n] = probe_wall - rec[100]  # start-up, final evaluation and export
    slowest = max(per_step.values())
    left = a.budget - (time.time() - start) - max(overhead.values()) - 45  # 45 s: eval + packing
    steps = max(100, min(a.max_steps, int(left / slowest) // 100 * 100))
    print(
        f"probe: {json.dumps(per_step)} s/step, overhead {json.dumps(overhead)} s -> {steps} steps",
        flush=True,
    )
    return steps


def train(names, steps: int, work: Path, logs: dict[str, Path], start: float) -> None:
    """The real runs, exported to weights/<name> (the default), side by side."""
    procs = {
        n: launch(["train", config_path(n), "--max-steps", str(steps), "--out", str(work / n)], logs[n])
        for n in names
    }
    wait_all(procs, logs)
    print(f"trained at {time.time() - start:.0f} s", flush=True)


def evaluate(names, out: Path) -> None:
    """The committed evaluation, written into each model card."""
    for n in names:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmtok",
                "eval",
                "tokenizer",
                "--model",
                n,
                "--device",
                "cuda",
                "--write",
                "--json",
            ],
            capture_output=True,
            text=True,
        )
        print(r.stdout[-3000:], r.stderr[-2000:], flush=True)
        (out / f"{n}.eval.json").write_text(r.stdout)


def pack(names, out: Path, part_mb: int) -> None:
    """weights/<name> -> out/<name>.tar.000, .001, ... (the device hands back files of 16 MB at most);
    join with ``cat <name>.tar.* > <name>.tar``."""
    for n in names:
        tmp = Path(f"/tmp/{n}.tar")
        with tarfile.open(tmp, "w") as tar:
            tar.add(f"weights/{n}", arcname=n)
        data, size = tmp.read_bytes(), part_mb << 20
        for i in range(0, len(data), size):
            (out / f"{n}.tar.{i // size:03d}").write_bytes(data[i : i + size])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
