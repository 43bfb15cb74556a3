"""``mmtok batch``: many jobs of any task, one model instance per (task, model), resumable, sharded by rank.

    mmtok batch jobs.jsonl --out results/                     # one JSON object a line
    mmtok batch jobs.csv --out results/                       # a header row, one job a row
    mmtok batch photos/ --task tokenize --model kl-f8-64 --out results/   # a folder of inputs
    torchrun --nproc_per_node 4 -m mmtok batch jobs.jsonl --out results/  # the same, on 4 ranks

A job is the arguments of one command (``task`` = generate | tokenize | clip | compress | weaklabel |
ground); ``--task``/``--model``/``--set KEY=VALUE`` give defaults a job may override. Relative paths
in a jobs file are read relative to that file's folder (then the working folder).

Output: ``OUT/<job id>/`` (the job's files and ``job.json``) and ``OUT/manifest.jsonl``, one record a
job: ``id, task, status (ok | failed), outputs, seconds, error, result, rank, run``. A job id is the
job's ``id`` field or ``<task>-<hash of its arguments>`` (so an edited job is a new job).

Reliability: a job writes into ``OUT/.tmp/`` and its folder is renamed into place when complete, so a
killed batch leaves no partial output; each finished job's record is appended (flushed, fsynced) to
``OUT/manifest.part-<rank>.jsonl`` at once. A rerun takes the finished jobs from the manifest, the
leftover parts and the ``job.json`` files, skips them, and retries the failed ones. A bad job (bad
arguments, unreadable input, unknown model) is recorded with its one-line error and the batch goes
on. Exit code 0 when every job succeeded, 3 when some failed, 2 when the batch itself cannot run.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the pending jobs are dealt round-robin by rank (no overlap,
no gaps); each rank writes its own manifest part and rank 0 merges them once every rank is done.
Ranks coordinate through ``torch.distributed`` barriers (gloo) and need ``OUT`` on a shared
filesystem when they run on several machines.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .clip.pipeline import ClipPipeline
from .errors import InputError, MmtokError
from .generation.pipeline import GenerationPipeline
from .tokenizers.pipeline import TokenizePipeline

TASKS = ("generate", "tokenize", "clip", "compress", "weaklabel", "ground")
IMAGE_TASKS = ("tokenize", "clip", "compress")
VOLUME_TASKS = ("weaklabel", "ground")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MANIFEST = "manifest.jsonl"
JOB_RECORD = "job.json"
MAX_JOBS_FILE = 256 * 2**20
EXIT_SOME_FAILED = 3

# Per task: key -> parser of its value (a JSON value, or a CSV cell as text). "path" keys are files.
_INT, _FLOAT, _TEXT, _PATH, _LIST, _BOOL = "int", "float", "text", "path", "list", "bool"
KEYS: dict[str, dict[str, str]] = {
    "generate": {"model": _TEXT, "prompt": _TEXT, "class": _INT, "n": _INT, "seed": _INT, "steps": _INT,
                 "cfg": _FLOAT, "sampler": _TEXT},
    "tokenize": {"model": _TEXT, "image": _PATH},
    "clip": {"model": _TEXT, "image": _PATH, "images": _LIST, "labels": _LIST, "top": _INT},
    "compress": {"model": _TEXT, "image": _PATH, "method": _TEXT, "keep": _FLOAT, "labels": _LIST,
                 "top": _INT, "layer": _INT},
    "weaklabel": {"report": _PATH, "pet": _PATH, "ct": _PATH, "method": _TEXT, "fraction": _FLOAT,
                  "suv_tol": _FLOAT, "slice_tol": _INT, "slice_origin": _TEXT, "slice_base": _INT},
    "ground": {"model": _TEXT, "pet": _PATH, "ct": _PATH, "text": _TEXT, "overlap": _FLOAT,
               "overlay": _BOOL},
}  # fmt: skip
REQUIRED = {
    "generate": ("model",),
    "tokenize": ("model", "image"),
    "clip": ("labels",),
    "compress": ("image",),
    "weaklabel": ("report", "pet"),
    "ground": ("pet", "ct", "text"),
}
DEFAULT_MODEL = {
    "clip": "lightclip-shapes64",
    "compress": "lightclip-shapes64",
    "ground": "contextual3d-phantom",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


# ----------------------------------------------------------------------------- jobs


@dataclass
class Job:
    id: str
    task: str | None
    args: dict[str, Any]
    where: str  # "line 3", "row 4", "photos/a.png": for error messages
    error: str | None = None  # a job that cannot even be parsed is recorded as failed
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> tuple[str, str]:
        return (self.task or "", str(self.args.get("model") or ""))


def _parse_value(kind: str, value: Any, key: str, base: Path | None) -> Any:
    if kind == _INT:
        if isinstance(value, bool):
            raise InputError(f"{key}: expected an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, int | float) or not float(number).is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"{key}: expected an integer, got {value!r}") from None
    if kind == _FLOAT:
        if isinstance(value, bool):
            raise InputError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InputError(f"{key}: expected a number, got {value!r}") from None
    if kind == _BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.strip().lower() in ("1", "true", "yes")
        raise InputError(f"{key}: expected true or false, got {value!r}")
    if kind == _LIST:
        if isinstance(value, str):  # a CSV cell or a plain string: ';'-separated, like the UI
            value = [v.strip() for v in value.split(";") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{key}: expected a list of strings, got {value!r}")
        return [_path(v, base) for v in value] if key == "images" else value
    if not isinstance(value, str):
        raise InputError(f"{key}: expected a string, got {value!r}")
    return _path(value, base) if kind == _PATH else value


def _path(value: str, base: Path | None) -> str:
    p = Path(value).expanduser()
    if not p.is_absolute() and base is not None and (base / p).exists():
        return str(base / p)
    return str(p)


def _job_id(task: str | None, args: dict[str, Any]) -> str:
    canonical = json.dumps({"task": task, **args}, sort_keys=True, default=str)
    return f"{task or 'job'}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def make_job(raw: Any, where: str, base: Path | None, defaults: dict[str, Any]) -> Job:
    """One job from a parsed JSON object or CSV row (+ defaults); bad ones carry their error."""
    if not isinstance(raw, dict):
        return Job(f"bad-{_slug(where)}", None, {}, where, error=f"{where}: a job must be a JSON object")
    merged = {**defaults, **{k: v for k, v in raw.items() if v is not None and v != ""}}
    task = merged.pop("task", None)
    given_id = merged.pop("id", None)
    job = Job("", task if isinstance(task, str) else None, {}, where, raw=dict(raw))
    try:
        if task not in TASKS:
            raise InputError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
        known = KEYS[task]
        for key, value in merged.items():  # "\udcff" in JSON decodes to a lone surrogate
            if any(
                isinstance(t, str) and _SURROGATE.search(t)
                for t in (value if isinstance(value, list) else [value])
            ):
                raise InputError(f"{key}: not valid UTF-8 text")
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise InputError(f"unknown key {unknown[0]!r} for {task} (known: {', '.join(known)})")
        job.args = {k: _parse_value(known[k], v, k, base) for k, v in merged.items()}
        if task in DEFAULT_MODEL and "model" not in job.args:
            job.args["model"] = DEFAULT_MODEL[task]
        missing = [k for k in REQUIRED[task] if k not in job.args]
        if task == "clip" and "image" not in job.args and "images" not in job.args:
            missing.append("image")
        if missing:
            raise InputError(f"{task} needs {' and '.join(missing)}")
    except MmtokError as e:
        job.error = f"{where}: {e}"
    if given_id is not None:
        if not isinstance(given_id, str | int) or not _SAFE_ID.fullmatch(str(given_id)):
            job.id = f"bad-{_slug(where)}"
            job.error = job.error or f"{where}: id {given_id!r} must be letters, digits, '_', '.' or '-'"
        else:
            job.id = str(given_id)
    else:
        job.id = _job_id(job.task, job.args if job.error is None else merged) if job.task else ""
        job.id = job.id or f"bad-{_slug(where)}"
    return job


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "job"


def read_jobs(
    source: str | os.PathLike, task: str | None = None, defaults: dict[str, Any] | None = None
) -> list[Job]:
    """Jobs from a JSONL file, a CSV file or a folder of inputs (with ``task``); ids made unique."""
    source = Path(source)
    defaults = dict(defaults or {})
    if task is not None:
        defaults["task"] = task
    if source.is_dir():
        jobs = _folder_jobs(source, task, defaults)
    elif source.is_file():
        jobs = _file_jobs(source, defaults)
    else:
        raise InputError(f"{source}: no such jobs file or folder")
    if not jobs:
        raise InputError(f"{source}: no jobs found")
    seen: dict[str, int] = {}
    for job in jobs:  # identical jobs (or repeated ids) stay distinct: -2, -3 ...
        count = seen.get(job.id, 0) + 1
        seen[job.id] = count
        if count > 1:
            job.id = f"{job.id}-{count}"
    return jobs


def _file_jobs(path: Path, defaults: dict[str, Any]) -> list[Job]:
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty jobs file (0 bytes)")
    if size > MAX_JOBS_FILE:
        raise InputError(
            f"{path}: jobs file of {size / 2**20:.0f} MB is over the {MAX_JOBS_FILE // 2**20} MB limit"
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text (a jobs file is JSONL or CSV)") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the jobs file ({e.strerror or e})") from None
    if "\x00" in text:
        raise InputError(f"{path}: binary data, not a JSONL or CSV jobs file")
    base = path.resolve().parent
    first = text.lstrip()[:1]
    jsonl = path.suffix.lower() in (".jsonl", ".json", ".ndjson") or (
        path.suffix.lower() != ".csv" and first == "{"
    )
    jobs = []
    if jsonl:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                raw = json.loads(line)
            except ValueError as e:
                where = f"line {n}"
                jobs.append(Job(f"bad-line-{n}", None, {}, where, error=f"{where}: not valid JSON ({e.msg})"))
                continue
            jobs.append(make_job(raw, f"line {n}", base, defaults))
        return jobs
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise InputError(f"{path}: not a valid CSV file ({e})") from None
    if rows and "task" not in rows[0] and "task" not in defaults:
        raise InputError(f"{path}: the CSV header has no 'task' column: add one or give --task")
    for n, row in enumerate(rows, 2):  # row 1 is the header
        if None in row:  # more cells than header names
            jobs.append(Job(f"bad-row-{n}", None, {}, f"row {n}", error=f"row {n}: more cells than columns"))
            continue
        jobs.append(make_job({k.strip(): v for k, v in row.items() if k}, f"row {n}", base, defaults))
    return jobs


def _folder_jobs(folder: Path, task: str | None, defaults: dict[str, Any]) -> list[Job]:
    if task not in IMAGE_TASKS + VOLUME_TASKS:
        raise InputError(
            f"{folder} is a folder of inputs: give --task {' | '.join(IMAGE_TASKS + VOLUME_TASKS)}"
        )
    jobs = []
    if task in IMAGE_TASKS:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for p in files:
            rel = str(p.relative_to(folder))
            job = make_job({"image": str(p)}, rel, None, defaults)
            job.id = job.id if job.error else _slug(rel)
            jobs.append(job)
        return jobs
    # weaklabel / ground: one case folder each (the phantom layout: SUV.nii.gz, CTres.nii.gz, report.txt)
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pet = next(
            (case / n for n in ("SUV.nii.gz", "SUV.nii", "PET.nii.gz", "PET.nii") if (case / n).is_file()),
            None,
        )
        if pet is None:
            continue
        raw: dict[str, Any] = {"pet": str(pet)}
        ct = next(
            (case / n for n in ("CTres.nii.gz", "CTres.nii", "CT.nii.gz", "CT.nii") if (case / n).is_file()),
            None,
        )
        if ct is not None:
            raw["ct"] = str(ct)
        if task == "weaklabel":
            raw["report"] = str(case / "report.txt")
        elif (case / "text.txt").is_file() and "text" not in defaults:
            raw["text"] = (case / "text.txt").read_text(encoding="utf-8", errors="replace").strip()
        job = make_job(raw, case.name, None, defaults)
        job.id = job.id if job.error else _slug(case.name)
        jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------- runners


class Runners:
    """Loads each (task, model) pipeline once and runs jobs through it, writing into a folder."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._pipes: dict[tuple[str, str], Any] = {}
        self._failed: dict[tuple[str, str], str] = {}

    def release(self, keep: tuple[str, str] | None = None) -> None:
        """Drop every pipeline but ``keep`` (jobs are grouped, so a finished group's model is freed)."""
        for key in [k for k in self._pipes if k != keep]:
            del self._pipes[key]

    def pipeline(self, task: str, model: str) -> Any:
        key = (task, model)
        if key in self._failed:  # a model that failed to load fails its other jobs at once, alike
            raise MmtokError(self._failed[key])
        if key not in self._pipes:
            try:
                self._pipes[key] = self._load(task, model)
            except MmtokError as e:
                self._failed[key] = str(e)
                raise
        return self._pipes[key]

    def _load(self, task: str, model: str) -> Any:
        if task == "generate":
            return GenerationPipeline(model, device=self.device)
        if task == "tokenize":
            return TokenizePipeline(model, device=self.device)
        if task == "clip":
            return ClipPipeline(model, device=self.device)
        if task == "compress":
            try:
                from .compression.pipeline import CompressPipeline
            except ImportError:
                raise MmtokError("compress: not available in this copy of mmtok") from None
            return CompressPipeline(model, device=self.device)
        raise MmtokError(f"{task}: no model to load")

    def run(self, job: Job, out: Path) -> dict[str, Any]:
        """Run ``job``, writing its files into ``out``; returns the JSON-able result."""
        return getattr(self, f"_{job.task}")(job.args, out)

    def _generate(self, a: dict[str, Any], out: Path) -> dict[str, Any]:
        pipe = self.pipeline("generate", a["model"])
        result = pipe(
            prompt=a.get("prompt"),
            class_label=a.get("class"),
            n=a.get("n", 4),
            seed=a.get("seed", 0),
            steps=a.get("steps", 20),
            cfg=a.get("cfg", 3.0),
            **({"sampler": a["sampler"]} if "sampler" in a else {}),
        )
        manifest = GenerationPipeline.save(result, out)
        record = {"images": len(manifest["images"]), "seconds_sampling": round(result.timings["sample"], 3)}
        if result.note:  # the prompt's words the model never saw (the job still ran)
            record["note"] = result.note
        return record

    def _tokenize(self, a: dict[str, Any], out: Path) -> dict[str, Any]:
        pipe = self.pipeline("tokenize", a["model"])
        (r,) = pipe.run_files([a["image"]], out=out)
        return {k: r[k] for k in ("psnr", "ssim", "token_shape", "size")}

    def _clip(self, a: dict[str, Any], out: Path) -> dict[str, Any]:
        pipe = self.pipeline("clip", a["model"])
        images = ([a["image"]] if "image" in a else []) + list(a.get("images", []))
        results = pipe.classify(images, a["labels"], top=a.get("top"))
        _write_json(out / "result.json", {"model": a["model"], "results": results})
        return {"labels": [r["label"] for r in results], "scores": [round(r["score"], 5) for r in results]}

    def _compress(self, a: dict[str, Any], out: Path) -> dict[str, Any]:
        pipe = self.pipeline("compress", a["model"])
        options = {k: a[k] for k in ("labels", "top", "layer") if k in a}
        result = pipe.run(a["image"], method=a.get("method", "tcc"), keep=a.get("keep", 0.5), **options)
        overlay = result.pop("overlay", None)
        if overlay is not None:
            overlay.save(out / "keep_map.png")
        _write_json(out / "result.json", result)
        keys = ("tokens_kept", "tokens_total", "same_top1", "cosine")
        return {k: result[k] for k in keys if k in result} | {"top_after": result["top_after"][0]["label"]}

    def _weaklabel(self, a: dict[str, Any], out: Path) -> dict[str, Any]:
        from .grounding.weaklabel import WeakLabelConfig, run_weaklabel  # PET/CT stack: loaded on use

        options = {
            k: a[k]
            for k in ("method", "fraction", "suv_tol", "slice_tol", "slice_origin", "slice_base")
            if k in a
        }
        try:
            config = WeakLabelConfig(**options)
        except (TypeError, ValueError) as e:
            raise InputError(f"weaklabel options: {e}") from None
        summary = run_weaklabel(a["report"], a["pet"], out, ct=a.get("ct"), config=config)
        located = sum(f["status"] == "located" for f in summary["findings"])
        return {"findings": len(summary["findings"]), "located": located}

    def _ground(self, a: dict[str, Any], out: Path) -> dict[str, Any]:
        from .grounding.pipeline import run_ground  # PET/CT stack (nibabel, pydicom): loaded on use

        overlay = out / "overlay.png" if a.get("overlay") else None
        info = run_ground(a["pet"], a["ct"], a["text"], out / "mask.nii.gz", model=a["model"],
                          device=self.device, overlay=overlay, overlap=a.get("overlap", 0.5))  # fmt: skip
        return {k: info[k] for k in ("voxels", "volume_ml", "peak_suv", "peak_voxel") if k in info}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- ranks


class Ranks:
    """RANK / WORLD_SIZE from torchrun; barriers over gloo (only when there is more than one rank)."""

    def __init__(self):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._owns_group = False
        if self.world > 1:
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                hours = float(os.environ.get("MMTOK_BATCH_TIMEOUT_H", "72"))  # ranks wait for the slowest
                dist.init_process_group("gloo", timeout=datetime.timedelta(hours=hours))
                self._owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()

    def device(self, name: str) -> str:
        if self.world > 1 and name in ("cuda", "auto"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return name


# ----------------------------------------------------------------------------- the batch


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # the half-written last line of a killed run
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            records.append(record)
    return records


def previous_state(out: Path) -> dict[str, dict[str, Any]]:
    """Last record per job id: manifest.jsonl, then leftover parts, then job.json of finished folders."""
    state: dict[str, dict[str, Any]] = {}
    for record in _read_records(out / MANIFEST):
        state[record["id"]] = record
    for part in sorted(out.glob("manifest.part-*.jsonl")):
        for record in _read_records(part):
            state[record["id"]] = record
    if out.is_dir():
        for folder in out.iterdir():  # renamed into place but killed before its record was appended
            record_file = folder / JOB_RECORD
            if folder.is_dir() and not folder.name.startswith(".") and record_file.is_file():
                old = state.get(folder.name)
                if old is None or old.get("status") != "ok":
                    try:
                        record = json.loads(record_file.read_text(encoding="utf-8"))
                    except (OSError, ValueError):
                        continue
                    if isinstance(record, dict) and record.get("id") == folder.name:
                        state[folder.name] = record
    return state


def _done(record: dict[str, Any] | None, out: Path) -> bool:
    """A finished job: recorded ok and its outputs still there."""
    if not record or record.get("status") != "ok":
        return False
    return all((out / o).exists() for o in record.get("outputs", []))


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise MmtokError(f"cannot write to the output folder {out}: {e.strerror or e}") from None


def _write_manifest(out: Path, jobs: list[Job], state: dict[str, dict[str, Any]]) -> None:
    lines = [json.dumps(state[j.id], sort_keys=True, default=str) + "\n" for j in jobs if j.id in state]
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / MANIFEST)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MmtokError(
            f"cannot write {out / MANIFEST}: {e.strerror or e}; the previous manifest is intact"
        ) from None


def _one_line(e: BaseException) -> str:
    if isinstance(e, MmtokError):
        return str(e)
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return f"cannot write or read a file{where}: {e.strerror or e}"
    if isinstance(e, MemoryError):
        return "out of memory"
    return " ".join(f"internal error (a bug, see errors.log): {type(e).__name__}: {e}".split())


@dataclass
class Summary:
    out: str
    jobs: int
    ok: int
    failed: int
    skipped: int  # finished by an earlier run
    ran: int  # run by this process
    failures: list[dict[str, Any]]

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 else EXIT_SOME_FAILED


def run_batch(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    task: str | None = None,
    defaults: dict[str, Any] | None = None,
    device: str = "cpu",
    retry_failed: bool = True,
    progress: bool = True,
    on_job: Callable[[dict[str, Any]], None] | None = None,
) -> Summary:
    """Run every pending job of ``source`` into ``out``; see the module docstring."""
    if task is not None and task not in TASKS:
        raise InputError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    ranks = Ranks()
    try:
        return _run(source, Path(out), task, defaults, device, retry_failed, progress, on_job, ranks)
    finally:
        ranks.close()


def _run(source, out, task, defaults, device, retry_failed, progress, on_job, ranks: Ranks) -> Summary:
    jobs = read_jobs(source, task, defaults)
    if ranks.main:
        _check_writable(out)
    ranks.barrier()
    if not ranks.main:
        _check_writable(out)
    state = previous_state(out)
    ranks.barrier()  # every rank has the same snapshot before anyone writes
    if ranks.main:  # fold leftovers of a killed run into the manifest, drop stale temp folders
        if state:
            _write_manifest(out, jobs, state)
        for part in out.glob("manifest.part-*.jsonl"):
            part.unlink(missing_ok=True)
        shutil.rmtree(out / ".tmp", ignore_errors=True)
    ranks.barrier()

    skipped = [j for j in jobs if _done(state.get(j.id), out)]
    pending = [j for j in jobs if not _done(state.get(j.id), out)]
    if not retry_failed:
        pending = [j for j in pending if state.get(j.id, {}).get("status") != "failed"]
    mine = pending[ranks.rank :: ranks.world]  # round-robin: no overlap, no gaps
    # One model instance per (task, model): run a group's jobs together (stable within the group).
    order = sorted(range(len(mine)), key=lambda i: (mine[i].group, i))
    run_id = os.environ.get("MMTOK_BATCH_RUN") or uuid.uuid4().hex[:12]
    runners = Runners(ranks.device(device))
    part = out / f"manifest.part-{ranks.rank:05d}.jsonl"
    from tqdm.auto import tqdm

    show = progress and ranks.main
    bar = tqdm(
        total=len(mine), desc="batch", unit="job", file=sys.stderr, disable=not show, dynamic_ncols=True
    )
    failed_here = 0
    try:
        with open(part, "a", encoding="utf-8") as log:
            for i in order:
                job = mine[i]
                runners.release(keep=(job.task, str(job.args.get("model"))))
                record = _execute(job, out, runners, ranks.rank, run_id)
                try:
                    log.write(json.dumps(record, sort_keys=True, default=str) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                except OSError as e:
                    raise MmtokError(f"cannot append to {part}: {e.strerror or e}") from None
                failed_here += record["status"] != "ok"
                bar.update(1)
                bar.set_postfix(failed=failed_here)
                if on_job is not None:
                    on_job(record)
    except OSError as e:
        raise MmtokError(f"cannot write {part}: {e.strerror or e}") from None
    finally:
        bar.close()
        runners.release()

    ranks.barrier()  # every rank done: rank 0 merges the parts
    if ranks.main:
        merged = previous_state(out)
        _write_manifest(out, jobs, merged)
        for p in out.glob("manifest.part-*.jsonl"):
            p.unlink(missing_ok=True)
        try:
            (out / ".tmp").rmdir()
        except OSError:
            pass
    ranks.barrier()
    final = {r["id"]: r for r in _read_records(out / MANIFEST)}
    records = [final.get(j.id, {"id": j.id, "status": "failed", "error": "no record"}) for j in jobs]
    failures = [{"id": r["id"], "error": r.get("error")} for r in records if r.get("status") != "ok"]
    return Summary(
        str(out), len(jobs), len(jobs) - len(failures), len(failures), len(skipped), len(mine), failures
    )


def _execute(job: Job, out: Path, runners: Runners, rank: int, run_id: str) -> dict[str, Any]:
    record: dict[str, Any] = {"id": job.id, "task": job.task, "where": job.where, "status": "failed",
                              "outputs": [], "seconds": 0.0, "error": None, "result": None,
                              "rank": rank, "run": run_id}  # fmt: skip
    if job.error is not None:
        record["error"] = job.error
        return record
    start = time.perf_counter()
    tmp = out / ".tmp" / f"{job.id}.{rank}.{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = runners.run(job, tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        record.update(status="ok", result=result, outputs=[f"{job.id}/{f}" for f in files])
        record["seconds"] = round(time.perf_counter() - start, 4)
        _write_json(tmp / JOB_RECORD, record)  # travels with the folder: a kill after the rename is seen
        final = out / job.id
        if final.exists():  # an earlier, unrecorded attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except BaseException as e:  # a bad job never stops the batch
        if not isinstance(e, MmtokError | OSError | MemoryError):
            _log_bug(out, job, e)
        shutil.rmtree(tmp, ignore_errors=True)
        error = _one_line(e).replace(str(tmp), str(out / job.id))  # name the job's folder, not the temp
        record.update(status="failed", outputs=[], result=None, error=error)
        record["seconds"] = round(time.perf_counter() - start, 4)
        if not isinstance(e, Exception):  # SystemExit and the like: record, then stop
            raise
    return record


def _log_bug(out: Path, job: Job, e: BaseException) -> None:
    try:
        with open(out / "errors.log", "a", encoding="utf-8") as f:
            f.write(f"--- job {job.id} ({job.where})\n")
            f.write("".join(traceback.format_exception(e)))
    except OSError:
        pass


# ----------------------------------------------------------------------------- CLI


def _defaults(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def cmd_batch(args: argparse.Namespace) -> int:
    defaults = _defaults(args.set)
    if args.model:
        defaults["model"] = args.model
    summary = run_batch(args.jobs, args.out, task=args.task, defaults=defaults, device=args.device,
                        retry_failed=not args.no_retry, progress=not args.json)  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:
        return summary.exit_code
    if args.json:
        sys.stdout.write(
            json.dumps({**vars(summary), "manifest": str(Path(args.out) / MANIFEST)}, sort_keys=True) + "\n"
        )
    else:
        for f in summary.failures[:20]:
            print(f"failed {f['id']}: {f['error']}")
        if len(summary.failures) > 20:
            print(f"... and {len(summary.failures) - 20} more failures (see the manifest)")
        done = f"{summary.ok} ok ({summary.skipped} done before), {summary.failed} failed"
        print(f"{summary.jobs} jobs: {done} -> {Path(args.out) / MANIFEST}")
    return summary.exit_code


def add_commands(sub) -> None:
    """Add ``batch`` to the ``mmtok`` subparsers."""
    p = sub.add_parser("batch", help="run many jobs (JSONL / CSV / a folder of inputs), resumable, by rank")
    p.add_argument("jobs", help="a .jsonl or .csv jobs file, or a folder of inputs (then give --task)")
    p.add_argument("--out", required=True, help="output folder: <job id>/ per job and manifest.jsonl")
    p.add_argument("--task", choices=TASKS, default=None, help="task of every job without its own")
    p.add_argument("--model", default=None, help="model of every job without its own")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a default argument of every job (repeatable)"
    )
    p.add_argument("--no-retry", action="store_true", help="leave jobs that failed before as they are")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda (one GPU per rank), mps or auto")
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.set_defaults(handler=cmd_batch)
