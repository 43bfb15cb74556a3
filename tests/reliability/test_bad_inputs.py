"""The bad-input suite for the command line: every command that reads a file, a text or a model name is
fed the zoo (tests/reliability/badfiles.py) and must answer with one ``mmtok: error:`` line and exit 2
-- or, inside ``mmtok batch``, a per-job error -- never a traceback, a hang or a crash.
docs/reliability.md tabulates the outcomes."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from badfiles import IMAGE_ACCEPTED, IMAGE_ERRORS, PROMPTS, nifti, pickle_weights
from reliability_helpers import REPO, one_line_error

from mmtok import hub

LABELS = ["--labels", "a red circle", "a blue square"]
IMAGE_COMMANDS = {
    "tokenize": lambda p: ["tokenize", p, "--model", "kl-f8-64"],
    "clip": lambda p: ["clip", "classify", p, *LABELS],
    "compress": lambda p: ["compress", p, "--keep", "0.5", *LABELS],
}


@pytest.mark.parametrize("command", IMAGE_COMMANDS)
@pytest.mark.parametrize("case", [*IMAGE_ERRORS, "tiny_1x1", *IMAGE_ACCEPTED])
def test_image_inputs(zoo, cli, command, case):
    path = zoo["image"][case]
    start = time.perf_counter()
    code, out, err = cli(*IMAGE_COMMANDS[command](path))
    assert time.perf_counter() - start < 60
    if case in IMAGE_ERRORS:
        line = one_line_error(code, err)
        assert IMAGE_ERRORS[case] in line and path.name in line
    elif case == "tiny_1x1" and command == "tokenize":  # below one 8x8 patch: refused
        assert "smaller than the tokenizer's 8x8 patch" in one_line_error(code, err)
    else:  # greys, alpha and 16 bits are converted; a 1x1 image is resized for CLIP
        assert code == 0 and "Traceback" not in err, err


def test_16_bit_images_keep_their_contrast(zoo):
    from mmtok.data.imagefile import read_image

    image = read_image(zoo["image"]["ok_16bit"])  # PIL's plain convert would clip it all to white
    assert (
        image.shape == (3, 64, 64) and image.min() < -0.9 and image.max() > 0.9 and 0.2 > image.mean() > -0.2
    )


VOLUME_ERRORS = {
    "missing": "not found",
    "empty": "not a readable NIfTI",
    "text_as_nii": "not a readable NIfTI",
    "truncated": "not a readable NIfTI",
    "2d": "must be a 3D volume",
    "4d": "must be a 3D volume",
    "nan": "NaN/Inf",
    "inf": "NaN/Inf",
    "singular_affine": "singular affine",
    "1e9_voxels": "voxels, over the",
}


@pytest.mark.parametrize("role", ["weaklabel --pet", "weaklabel --ct", "ground --pet", "ground --ct"])
@pytest.mark.parametrize("case", VOLUME_ERRORS)
def test_volume_inputs(zoo, cli, tmp_path, role, case):
    command, flag = role.split()
    bad, c = zoo["volume"][case], zoo["case"]
    files = {"--pet": c / "SUV.nii.gz", "--ct": c / "CTres.nii.gz"} | {flag: bad}
    if command == "weaklabel":
        argv = ["weaklabel", "--report", c / "report.txt", *sum(files.items(), ()), "--out", tmp_path / "wl"]
    else:
        text = "Left axillary node, SUVmax 7.2 (image 20)."
        argv = ["ground", *sum(files.items(), ()), "--text", text, "--out", tmp_path / "m.nii.gz"]
    start = time.perf_counter()
    line = one_line_error(*cli(*argv)[::2])
    assert time.perf_counter() - start < 10  # the 1e9-voxel header is refused before any allocation
    assert VOLUME_ERRORS[case] in line and bad.name in line and "unknown model" not in line
    assert not (tmp_path / "wl").exists() and not (tmp_path / "m.nii.gz").exists()


def test_pet_ct_grid_mismatch(zoo, cli, tmp_path):
    c = zoo["case"]
    ct = nifti(tmp_path, "ct_other_grid.nii.gz", np.zeros((20, 20, 20)))
    argv = ["weaklabel", "--report", c / "report.txt", "--pet", c / "SUV.nii.gz", "--ct", ct]
    line = one_line_error(*cli(*argv, "--out", tmp_path / "wl")[::2])
    assert "does not match the PET grid" in line
    # `mmtok ground` resamples such a CT onto the PET grid instead (tests/grounding covers the output).


@pytest.mark.parametrize("case", ["empty", "100kB", "non_utf8"])
def test_reports(zoo, cli, tmp_path, case):
    c = zoo["case"]
    argv = ["weaklabel", "--report", zoo["text"][case], "--pet", c / "SUV.nii.gz"]
    code, out, err = cli(*argv, "--out", tmp_path / "wl", "--json")
    if case == "100kB":  # 2,400 copies of one finding: read, parsed and answered (one lesion, many times)
        assert code == 0 and json.loads(out)["findings"]
    else:
        line = one_line_error(code, err)
        assert {"empty": "has no findings", "non_utf8": "is not UTF-8"}[case] in line


@pytest.fixture(scope="module")
def text_generator(tmp_path_factory):
    """An untrained tiny text-conditional xAR (prompt checks happen before any sampling)."""
    from mmtok.generation.xar import XAR

    torch.manual_seed(0)
    model = XAR(tokenizer="kl-f8-64", latent_channels=16, grid=8, dim=32, depth=1, heads=2, condition="text",
                text_length=48, text_dim=16, text_layers=1)  # fmt: skip
    return hub.save(model, tmp_path_factory.mktemp("gen") / "tiny-text-xar")


PROMPT_ERRORS = {
    "empty": ("is empty", "non-empty"),
    "100kB": ("tokens long", "limit"),
    "non_utf8": ("UTF-8", "UTF-8"),
}


@pytest.mark.parametrize("case", PROMPTS)
def test_prompts_and_texts(zoo, cli, tmp_path, text_generator, case):
    text = PROMPTS[case]
    prompt_error, label_error = PROMPT_ERRORS[case]
    c = zoo["case"]
    image, pet, ct = zoo["image"]["ok_gray"], c / "SUV.nii.gz", c / "CTres.nii.gz"
    ground_error = {"empty": "is empty", "100kB": "characters"}.get(case, "UTF-8")
    runs = {
        "generate": (
            ["generate", "--model", text_generator, "--prompt", text, "--out", tmp_path],
            prompt_error,
        ),
        "clip classify": (["clip", "classify", image, "--labels", text, "b"], label_error),
        "clip search": (["clip", "search", "--images", tmp_path, "--text", text, "--no-cache"], label_error),
        "compress": (["compress", image, "--labels", text, "b"], label_error),
        "ground": (
            ["ground", "--pet", pet, "--ct", ct, "--text", text, "--out", tmp_path / "m.nii"],
            ground_error,
        ),
    }
    for name, (argv, expected) in runs.items():
        code, out, err = cli(*argv)
        if name == "compress" and case == "100kB":  # accepted: CLIP reads the first 77 tokens of a label
            assert code == 0, err
            continue
        line = one_line_error(code, err)
        assert expected in line, f"{name}: {line}"
    assert not list(tmp_path.glob("*.png"))
    # A sensible prompt works with the same model.
    argv = ["generate", "--model", text_generator, "--prompt", "a red circle", "-n", "1", "--steps", "1"]
    code, _, err = cli(*argv, "--out", tmp_path / "ok", "--json")
    assert code == 0, err


@pytest.fixture(scope="module")
def pickled_weights(tmp_path_factory):
    return pickle_weights(tmp_path_factory.mktemp("pickle") / "evil-model", REPO / "weights" / "kl-f8-64")


def test_unknown_models_and_pickles_posing_as_weights(zoo, cli, tmp_path, pickled_weights):
    image, c = zoo["image"]["ok_gray"], zoo["case"]
    commands = {
        "generate": lambda m: ["generate", "--model", m, "--class", "1", "--out", tmp_path / "g"],
        "tokenize": lambda m: ["tokenize", image, "--model", m],
        "clip classify": lambda m: ["clip", "classify", image, *LABELS, "--model", m],
        "clip search": lambda m: ["clip", "search", "--images", tmp_path, "--text", "a", "--model", m],
        "compress": lambda m: ["compress", image, *LABELS, "--model", m],
        "ground": lambda m: ["ground", "--pet", c / "SUV.nii.gz", "--ct", c / "CTres.nii.gz", "--model", m,
                             "--text", "Left axillary node, SUVmax 7.2.", "--out", tmp_path / "m.nii"],
        "eval": lambda m: ["eval", "tokenizer", "--model", m, "--n", "2"],
    }  # fmt: skip
    for name, argv in commands.items():
        line = one_line_error(*cli(*argv("no-such-model"))[::2])
        assert "unknown model 'no-such-model'" in line, f"{name}: {line}"
        line = one_line_error(*cli(*argv(pickled_weights))[::2])
        assert "model.safetensors cannot be loaded" in line, f"{name}: {line}"


def test_malicious_pickle_is_never_unpickled(tmp_path):
    """A pickle whose loading would run a command: refused by the checkpoint reader (weights_only)."""
    from mmtok.errors import CheckpointError
    from mmtok.train.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # os.system("touch ...") when unpickled
    path = tmp_path / "step_00000010.pt"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="step_00000010.pt: corrupt or unreadable checkpoint"):
        load_checkpoint(path)
    weights = tmp_path / "w"
    pickle_weights(weights, REPO / "weights" / "kl-f8-64")
    (weights / "model.safetensors").write_bytes(payload)
    with pytest.raises(Exception, match="cannot be loaded"):
        hub.load(weights)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["missing", "empty", "non_utf8", "pickle", "image"])
def test_training_configs(zoo, cli, tmp_path, case):
    texts, images = zoo["text"], zoo["image"]
    configs = {"missing": tmp_path / "none.yaml", "empty": texts["empty"], "non_utf8": texts["non_utf8"]}
    config = configs.get(case, images["ok_gray"])
    if case == "pickle":
        config = tmp_path / "config.yaml"
        config.write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x04name\x94s.")
    line = one_line_error(*cli("train", config, "--out", tmp_path / "run")[::2])
    assert str(Path(config).name) in line or "name: missing" in line
    assert not (tmp_path / "run").exists()


def test_bad_jobs_inside_a_batch_are_per_job_errors(zoo, cli, tmp_path, text_generator):
    """The same zoo, as jobs of one batch: each bad job is recorded with its line, the rest run."""
    jobs = []
    for case, path in zoo["image"].items():
        for task in ("tokenize", "clip", "compress"):
            job = {"task": task, "image": str(path), "id": f"{task}-{case}"}
            job |= {"model": "kl-f8-64"} if task == "tokenize" else {"labels": ["a", "b"]}
            jobs.append(job)
    c = zoo["case"]
    for case, path in zoo["volume"].items():
        jobs.append(
            {
                "task": "weaklabel",
                "report": str(c / "report.txt"),
                "pet": str(path),
                "id": f"weaklabel-{case}",
            }
        )
    for case, text in PROMPTS.items():
        jobs.append(
            {"task": "generate", "model": str(text_generator), "prompt": text, "id": f"generate-{case}"}
        )
    jobs.append(
        {"task": "tokenize", "model": "no-such-model", "image": str(zoo["image"]["ok_gray"]), "id": "unknown"}
    )
    lines = [json.dumps(j) for j in jobs]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = cli("batch", tmp_path / "jobs.jsonl", "--out", tmp_path / "out", "--json")
    assert code == 3 and "Traceback" not in err
    records = {
        r["id"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())
    }
    assert len(records) == len(jobs)
    ok = {i for i, r in records.items() if r["status"] == "ok"}
    accepted = {f"{t}-{c}" for t in ("tokenize", "clip", "compress") for c in IMAGE_ACCEPTED}
    assert ok == accepted | {"clip-tiny_1x1", "compress-tiny_1x1"}
    for i, r in records.items():
        if i not in ok:
            assert r["error"] and "\n" not in r["error"] and "internal error" not in r["error"], r
    assert not (tmp_path / "out" / "errors.log").exists()  # no job hit a bug


def test_dicom_folders_wrong_kinds_and_settings(zoo, cli, tmp_path):
    notes = tmp_path / "not-dicom"
    notes.mkdir()
    (notes / "a.dcm").write_text("not DICOM")
    (tmp_path / "empty").mkdir()
    folders = [
        (tmp_path / "none", "not found"),
        (tmp_path / "empty", "no DICOM PET"),
        (notes, "no DICOM PET"),
    ]
    for folder, expected in [*folders, (zoo["image"]["text_as_png"], "not found")]:
        assert expected in one_line_error(*cli("suv", folder, "--out", tmp_path / "s.nii.gz")[::2])
    image, out = zoo["image"]["ok_gray"], ["--out", tmp_path / "g"]
    for argv, expected in [
        (["generate", "--model", "kl-f8-64", "--class", "1"], "not an image generator"),
        (["clip", "classify", image, *LABELS, "--model", "kl-f8-64"], "not a CLIP model"),
        (["tokenize", image, "--model", "lightclip-shapes64"], "not an image tokenizer"),
        (["generate", "--model", "xar-digits64", "--class", "1", "--seed", str(10**30), *out], "seed"),
        (["generate", "--model", "xar-digits64", "--class", "1", "-n", "100000", *out], "number of images"),
        (["generate", "--model", "xar-digits64", "--class", "1", "--cfg", "nan", *out], "guidance scale"),
        (["generate", "--model", "xar-digits64", "--class", "10", *out], "unknown class 10"),
    ]:
        assert expected in one_line_error(*cli(*argv)[::2])
    assert not (tmp_path / "g").exists()
