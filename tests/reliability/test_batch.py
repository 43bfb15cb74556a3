"""`mmtok batch`: JSONL / CSV / folder jobs, a manifest per job, reruns that skip finished jobs and retry
failed ones, bad jobs recorded while the batch goes on, kill -9 + rerun, a full disk, and 2 ranks."""

import json
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
from badfiles import good_png
from reliability_helpers import child_env, mmtok_command, one_line_error, run_child, torchrun_command

GEN = {"task": "generate", "model": "xar-digits64", "n": 1, "steps": 2}


def write_jobs(path: Path, jobs: list) -> Path:
    lines = [job if isinstance(job, str) else json.dumps(job) for job in jobs]
    path.write_text("\n".join(lines) + "\n")
    return path


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def leftovers(out: Path) -> list[str]:
    """Anything in ``out`` that is neither the manifest nor a recorded output (or job.json)."""
    expected = {"manifest.jsonl"}
    for record in manifest(out):
        expected |= set(record["outputs"])
        if record["status"] == "ok":
            expected.add(f"{record['id']}/job.json")
    found = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    dirs = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())}
    return sorted((found - expected) | dirs)


def test_jsonl_jobs_are_recorded_and_a_rerun_retries_only_the_failed(tmp_path, cli):
    image = good_png(tmp_path, "scene.png")
    (tmp_path / "fake.png").write_text("not an image")
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {**GEN, "class": 3, "n": 2, "seed": 1},
            {"task": "tokenize", "model": "kl-f8-64", "image": "scene.png"},  # relative to the jobs file
            {"task": "tokenize", "model": "kl-f8-64", "image": "fake.png"},
            {"task": "clip", "image": str(image), "labels": ["a red circle", "a blue square"], "id": "mine"},
            {**GEN, "model": "no-such-model", "class": 1},
            "this line is not JSON",
            {"task": "dance"},
            {**GEN, "class": 1, "colour": "red"},
            {**GEN, "class": 99},
            {"task": "tokenize", "model": "kl-f8-64", "image": "scene.png"},  # the same job again
        ],
    )
    out = tmp_path / "out"
    code, stdout, err = cli("batch", jobs, "--out", out)
    assert code == 3 and "Traceback" not in err
    records = manifest(out)
    assert len(records) == 10 and len({r["id"] for r in records}) == 10  # file order, one record a job
    assert [r["status"] for r in records] == ["ok", "ok", "failed", "ok", "failed"] + ["failed"] * 4 + ["ok"]
    assert records[3]["id"] == "mine" and records[9]["id"] == records[1]["id"] + "-2"
    errors = {r["where"]: r["error"] for r in records if r["status"] == "failed"}
    assert "not an image file" in errors["line 3"]
    assert "unknown model 'no-such-model'" in errors["line 5"]
    assert errors["line 6"].startswith("line 6: not valid JSON")
    assert "task: expected one of" in errors["line 7"]
    assert "unknown key 'colour'" in errors["line 8"]
    assert "unknown class 99" in errors["line 9"]
    assert all("\n" not in e and "Traceback" not in e for e in errors.values())
    first = records[0]
    assert first["task"] == "generate" and first["seconds"] > 0 and first["result"]["images"] == 2
    assert sorted(first["outputs"]) == [
        f"{first['id']}/{n}" for n in ("image_000.png", "image_001.png", "manifest.json")
    ]
    assert records[1]["result"]["token_shape"] == [16, 8, 8]
    assert json.loads((out / "mine" / "result.json").read_text())["results"][0]["label"] in (
        "a red circle",
        "a blue square",
    )
    assert leftovers(out) == []  # no temp folder, no manifest part, nothing unrecorded
    assert "10 jobs: 4 ok (0 done before), 6 failed" in stdout.splitlines()[-1]
    mtime = (out / first["outputs"][0]).stat().st_mtime_ns

    # Rerun: finished jobs are skipped (same record, same files), failed ones run again.
    code, stdout, _ = cli("batch", jobs, "--out", out, "--json")
    assert code == 3
    summary = json.loads(stdout)
    assert (summary["ran"], summary["skipped"], summary["failed"]) == (6, 4, 6)
    again = manifest(out)
    assert [r for r in again if r["status"] == "ok"] == [r for r in records if r["status"] == "ok"]
    assert all(a["run"] != b["run"] for a, b in zip(again, records, strict=True) if a["status"] == "failed")
    assert (out / first["outputs"][0]).stat().st_mtime_ns == mtime

    # The good jobs alone: nothing to do, exit 0.
    good = [json.loads(line) for line in jobs.read_text().splitlines()[:2]]
    code, stdout, _ = cli("batch", write_jobs(tmp_path / "good.jsonl", good), "--out", out, "--json")
    assert code == 0 and json.loads(stdout)["ran"] == 0 and len(manifest(out)) == 2


def test_csv_rows_and_a_folder_of_inputs(tmp_path, cli):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        good_png(images, name)
    (images / "broken.png").write_text("text posing as a PNG")
    table = tmp_path / "jobs.csv"
    table.write_text(
        "task,model,image,labels,top\n"
        "tokenize,bin-f8-64,images/a.png,,\n"
        'clip,,images/b.png,"a red circle; a blue square;a green star",2\n'
        "clip,,images/b.png,,\n"
    )
    code, stdout, err = cli("batch", table, "--out", tmp_path / "csv", "--json")
    records = manifest(tmp_path / "csv")
    assert code == 3 and [r["status"] for r in records] == ["ok", "ok", "failed"]
    assert records[0]["where"] == "row 2" and any(o.endswith("a.codes.png") for o in records[0]["outputs"])
    assert (
        len(
            json.loads((tmp_path / "csv" / records[1]["id"] / "result.json").read_text())["results"][0][
                "scores"
            ]
        )
        == 2
    )
    assert records[2]["error"] == "row 4: clip needs labels"

    out = tmp_path / "folder"
    code, stdout, _ = cli("batch", images, "--task", "tokenize", "--model", "kl-f8-64", "--out", out)
    records = manifest(out)
    assert code == 3 and [r["id"] for r in records] == ["a.png", "b.png", "broken.png"]
    assert [r["status"] for r in records] == ["ok", "ok", "failed"] and "not an image" in records[2]["error"]
    assert (out / "a.png" / "a.recon.png").is_file() and leftovers(out) == []

    line = one_line_error(*cli("batch", images, "--out", tmp_path / "x")[::2])
    assert "give --task" in line


@pytest.mark.parametrize(
    "case", ["missing", "empty", "not_utf8", "pickle", "csv_without_task", "out_is_a_file"]
)
def test_a_batch_that_cannot_start_is_one_line_exit_2(tmp_path, cli, case):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{**GEN, "class": 1}])
    out = tmp_path / "out"
    if case == "missing":
        jobs = tmp_path / "none.jsonl"
    elif case == "empty":
        jobs.write_bytes(b"")
    elif case == "not_utf8":
        jobs.write_bytes(b'{"task": "generate", "prompt": "\xff\xfe"}\n')
    elif case == "pickle":
        jobs = tmp_path / "jobs.pkl"
        jobs.write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x04task\x94s.")
    elif case == "csv_without_task":
        jobs = tmp_path / "jobs.csv"
        jobs.write_text("model,image\nkl-f8-64,a.png\n")
    else:  # the output folder cannot be made: a file is in the way (works as root, unlike chmod)
        out.write_text("a file, not a folder")
        out = out / "sub"
    code, _, err = cli("batch", jobs, "--out", out)
    line = one_line_error(code, err)
    assert {"missing": "no such jobs file", "empty": "empty jobs file", "not_utf8": "not UTF-8",
            "pickle": "not UTF-8", "csv_without_task": "no 'task' column",
            "out_is_a_file": "cannot write to the output folder"}[case] in line  # fmt: skip


def _limit_file_size(limit: int):
    def apply():  # in the child: a write beyond `limit` bytes fails with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_fails_the_job_and_corrupts_nothing(tmp_path, cli):
    good_png(tmp_path, "big.png", size=128)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{**GEN, "class": 2}])
    out = tmp_path / "out"
    assert cli("batch", jobs, "--out", out)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # A second job whose reconstruction (~40 kB) does not fit under a 16 kB file-size limit.
    write_jobs(jobs, [{**GEN, "class": 2}, {"task": "tokenize", "model": "kl-f8-64", "image": "big.png"}])
    proc = subprocess.run(mmtok_command("batch", jobs, "--out", out), env=child_env(), capture_output=True,
                          text=True, timeout=240, preexec_fn=_limit_file_size(16_000))  # fmt: skip
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    first, second = manifest(out)
    assert first["status"] == "ok" and second["status"] == "failed"
    assert "File too large" in second["error"] and ".tmp" not in second["error"]
    for path, data in before.items():
        if path.name != "manifest.jsonl":
            assert path.read_bytes() == data, f"{path} changed"
    assert leftovers(out) == []


@pytest.mark.slow
def test_kill_9_mid_batch_then_rerun_does_every_job_exactly_once(tmp_path, cli):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{**GEN, "class": c, "seed": c, "steps": 6} for c in range(7)])
    out = tmp_path / "out"
    env = child_env(MMTOK_BATCH_RUN="first")
    proc = subprocess.Popen(mmtok_command("batch", jobs, "--out", out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    part = out / "manifest.part-00000.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if part.is_file() and len(part.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"finished before the kill: {err[-2000:]}"
    done_before = {json.loads(line)["id"] for line in part.read_text().splitlines() if line.endswith("}")}
    assert 2 <= len(done_before) < 7
    assert not (out / "manifest.jsonl").exists()
    # A job renamed into place just before the kill, but not yet in the part, counts as done too.
    done_before |= {p.name for p in out.iterdir() if (p / "job.json").is_file()}

    code, stdout, _ = cli("batch", jobs, "--out", out, "--json")
    assert code == 0
    records = manifest(out)
    assert len(records) == 7 and len({r["id"] for r in records}) == 7
    assert all(r["status"] == "ok" for r in records)
    # Jobs finished before the kill were not run again; the others were run by the rerun, once.
    for r in records:
        assert r["run"] == "first" if r["id"] in done_before else r["run"] != "first"
    summary = json.loads(stdout)
    assert summary["skipped"] >= len(done_before) and summary["skipped"] + summary["ran"] == 7
    assert leftovers(out) == []  # no partial PNG, no temp folder, no manifest part


@pytest.mark.dist
def test_two_ranks_share_the_jobs_without_overlap_or_gaps(tmp_path, cli):
    jobs = [{**GEN, "class": c, "seed": c} for c in range(5)] + [{"task": "tokenize", "model": "kl-f8-64"}]
    jobs = write_jobs(tmp_path / "jobs.jsonl", jobs)
    out = tmp_path / "out"
    proc = run_child(torchrun_command(2, "batch", jobs, "--out", out, "--json"), timeout=300)
    # Rank 0 exits 3 (a job failed), which torchrun reports as a failed worker.
    assert proc.returncode != 0 and "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]
    records = manifest(out)
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    assert sorted(r["rank"] for r in records) == [0, 0, 0, 1, 1, 1]  # dealt round-robin
    assert [r["status"] for r in records] == ["ok"] * 5 + ["failed"]
    assert records[5]["error"].endswith("tokenize needs image")
    assert leftovers(out) == []
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["jobs"] == 6 and summary["failed"] == 1

    # A job's images do not depend on which rank, or how many ranks, ran it.
    single = tmp_path / "single"
    assert cli("batch", write_jobs(tmp_path / "one.jsonl", [json.loads(jobs.read_text().splitlines()[3])]),
               "--out", single)[0] == 0  # fmt: skip
    (record,) = manifest(single)
    assert record["id"] == records[3]["id"] and records[3]["rank"] == 1
    for name in record["outputs"]:
        if name.endswith(".png"):
            assert (single / name).read_bytes() == (out / name).read_bytes()
