"""Load on the web UI: N concurrent clients for S seconds against ``mmtok serve`` on the CPU.

    python benchmarks/bench_load.py [--clients 20] [--seconds 60] [--mix clip,tokenize,generate]

Starts the real server (``python -m mmtok serve`` on a free port, the shipped weights, CPU) in its own
process, then runs ``--clients`` threads, each with its own ``gradio_client.Client``, calling the
endpoints of ``--mix`` in turn for ``--seconds``:

- ``clip``: ``/clip_classify`` of a 64x64 shapes scene against four labels (lightclip-shapes64);
- ``tokenize``: ``/tokenize`` of the same scene through kl-f8-64;
- ``generate``: ``/generate`` of one xar-digits64 image with 4 steps per entity.

Reported: requests answered and failed (target 0), requests/s, latency p50/p95/max (seconds, from the
client's call to its answer, queueing included), and the server's resident memory (its process and
children, sampled every 0.5 s): the peak over the first and over the last ``--window`` seconds (20) and
their difference -- memory is stable when the last window's peak is not above the first one's by more
than a few percent. Writes ``benchmarks/results/ui_load.json`` and ``ui_load.md``. The benchmark
reports; it does not fail.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
LABELS = "a red circle\na blue square\na green star\na handwritten digit seven"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(folder: Path) -> str:
    from PIL import Image

    from mmtok.data import build_dataset, to_uint8

    path = folder / "scene.png"
    Image.fromarray(to_uint8(build_dataset("shapes", "heldout", resolution=64)[0]["image"])).save(path)
    return str(path)


def start_server(port: int) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", CUDA_VISIBLE_DEVICES="")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmtok", "serve", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not answer within 180 s")


def rss_mb(pid: int) -> float:
    import psutil

    try:
        p = psutil.Process(pid)
        return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20
    except psutil.Error:
        return float("nan")


def call(client, kind: str, image: str):
    from gradio_client import handle_file

    if kind == "clip":
        return client.predict(handle_file(image), LABELS, "lightclip-shapes64", api_name="/clip_classify")
    if kind == "tokenize":
        return client.predict(handle_file(image), "kl-f8-64", api_name="/tokenize")
    if kind == "generate":
        return client.predict("xar-digits64", "", 7, 1, 0, 4, 3.0, api_name="/generate")
    raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of the first/last memory windows")
    parser.add_argument("--mix", default="clip,tokenize,generate")
    parser.add_argument("--out", default=str(RESULTS / "ui_load"))
    args = parser.parse_args()
    mix = args.mix.split(",")

    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="mmtok-load-"))
    image = scene(work)
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/"
    memory: list[tuple[float, float]] = []
    records: list[dict] = []
    lock, stop = threading.Lock(), threading.Event()

    def sample(t0: float) -> None:
        while not stop.is_set():
            memory.append((time.monotonic() - t0, rss_mb(server.pid)))
            time.sleep(0.5)

    def client_loop(i: int, t0: float, end: float) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # a client that cannot even connect counts as one failure
            with lock:
                records.append({"kind": "connect", "ok": False, "seconds": 0.0, "error": repr(e)[:200]})
            return
        n = i
        while time.monotonic() < end:
            kind = mix[n % len(mix)]
            n += 1
            start = time.monotonic()
            try:
                call(client, kind, image)
                ok, error = True, None
            except Exception as e:
                ok, error = False, f"{type(e).__name__}: {e}"[:200]
            with lock:
                records.append({"kind": kind, "ok": ok, "seconds": time.monotonic() - start,
                                "at": start - t0, "error": error})  # fmt: skip

    try:
        for kind in mix:  # warm the models once, outside the measured time
            call(Client(url, verbose=False), kind, image)
        t0 = time.monotonic()
        end = t0 + args.seconds
        sampler = threading.Thread(target=sample, args=(t0,), daemon=True)
        sampler.start()
        threads = [threading.Thread(target=client_loop, args=(i, t0, end)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.seconds + 600)
        elapsed = time.monotonic() - t0
        stop.set()
        sampler.join()
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()

    answered = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    lat = sorted(r["seconds"] for r in answered)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    first = [m for t, m in memory if t <= args.window]
    last = [m for t, m in memory if t >= elapsed - args.window]
    per_kind = {
        k: {"answered": sum(r["ok"] for r in records if r["kind"] == k),
            "failed": sum(not r["ok"] for r in records if r["kind"] == k),
            "p50_s": statistics.median([r["seconds"] for r in answered if r["kind"] == k] or [float("nan")])}
        for k in mix
    }  # fmt: skip
    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "mix": mix,
        "answered": len(answered),
        "failed": len(failed),
        "failures": sorted({r["error"] for r in failed})[:10],
        "requests_per_s": round(len(answered) / elapsed, 2),
        "latency_s": {
            "p50": round(q(0.5), 3),
            "p95": round(q(0.95), 3),
            "max": round(lat[-1], 3) if lat else None,
        },
        "per_kind": per_kind,
        "memory_mb": {
            "first_window_peak": round(max(first), 1) if first else None,
            "last_window_peak": round(max(last), 1) if last else None,
            "growth": round(max(last) - max(first), 1) if first and last else None,
        },
        "server_alive_after": alive,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["memory_mb"]
    table = [
        f"# Web UI under load ({args.clients} clients, {result['seconds']} s, CPU)",
        "",
        f"Command: `python benchmarks/bench_load.py --clients {args.clients} --seconds {args.seconds:g}`; "
        f"mix {', '.join(mix)}; {result['machine']}.",
        "",
        "| requests answered | failed | req/s | p50 s | p95 s | max s | RSS peak first/last "
        f"{args.window:g} s (MB) | growth (MB) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['answered']} | {result['failed']} | {result['requests_per_s']} | "
        f"{result['latency_s']['p50']} | {result['latency_s']['p95']} | {result['latency_s']['max']} | "
        f"{m['first_window_peak']} / "
        f"{m['last_window_peak']} | {m['growth']} |",
        "",
        "| endpoint | answered | failed | p50 s |",
        "|---|---|---|---|",
        *[f"| {k} | {v['answered']} | {v['failed']} | {v['p50_s']:.3f} |" for k, v in per_kind.items()],
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(table))
    print("\n".join(table))


if __name__ == "__main__":
    main()
