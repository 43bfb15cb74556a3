"""mmtok web UI: ``build_demo() -> gr.Blocks``. UI only: every tab calls an ``mmtok`` pipeline.

    mmtok serve                      # http://127.0.0.1:7860, the shipped weights, CPU
    python -m apps.gradio_app        # the same

Tabs: Generate (xAR, ECAR, ELM, DiT), Tokenize (KL / binary tokenizers), CLIP (labels, gallery search),
Compress (token keep-maps, labels before/after), PET/CT (phantoms or uploads, report weak labels,
sentence grounding, slice viewer, mask download). Errors from the pipelines (``MmtokError``) become one-line
messages in the page; uploads are validated by content (image decoding, NIfTI headers), not names.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

import mmtok
from mmtok.data.shapes import vocabulary
from mmtok.errors import MmtokError

CLIP_TASK = "clip"
DEFAULT_LABELS = "a red circle\na blue square\na green star\na handwritten digit seven"
MAX_UPLOAD = "300mb"  # a whole-body PET or CT NIfTI at 4 mm is ~10 MB; DICOM series are larger
DEVICE = {"name": "cpu"}
# Model-bound events share one queue (one worker): a CPU runs one model call at a time well, and two
# at once only thrash. Viewer events (slider, dropdowns) stay outside it so they never wait on a model.
MODELS = "models"
MAX_QUEUE = 64
COMPRESS_METHODS = [
    "tcc",
    "explain",
    "tome",
    "random",
    "pool",
]  # requests waiting beyond this are refused at once rather than piling up


def _models(task: str) -> list[str]:
    return [m["name"] for m in mmtok.list_models() if m.get("task") == task]


def _default(names: list[str], preferred: str) -> str | None:
    return preferred if preferred in names else (names[0] if names else None)


def _fail(message: str) -> gr.Error:
    """A user's mistake, shown in the page in one line; not a server fault, so no traceback in the log."""
    return gr.Error(message, print_exception=False)


def _error(e: Exception, path: str | None = None) -> gr.Error:
    """``MmtokError`` -> one line; an upload's server-side temp path is shown as its file name."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return _fail(text.replace(str(path), Path(path).name) if path else text)


def _pct(x) -> str:
    return "?" if x is None else f"{100 * float(x):.1f}%"


def image_input(**kwargs) -> gr.Image:
    """An upload ``gr.Image`` whose file reaches the handler undecoded. Gradio's own decoding fails on
    a non-image (a text file named .png) before the app sees it: a bare "Error" badge in the page and a
    traceback in the log. The handlers read every file by content (``read_image``) and say what is
    wrong in one line. (Patched on the instance: a ``gr.Image`` subclass would make gradio write a
    ``.pyi`` stub next to this file at import.)"""
    box = gr.Image(type="filepath", **kwargs)
    decode = box.preprocess

    def preprocess(payload):
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return decode(payload)

    box.preprocess = preprocess
    return box


def _timed(button, fn, inputs, outputs, clear, **kwargs):
    """Wire a model call to ``button``. A first, unqueued step clears ``clear`` (so an error never leaves
    the last run's result on show) and stamps the click time, which ``fn`` receives first: the time it
    reports then includes the queue wait and the model load, as the user's clock does."""
    started = gr.State(None)
    blank = lambda: (time.time(), *[None] * len(clear))  # noqa: E731
    return button.click(blank, None, [started, *clear], queue=False, api_visibility="private").then(
        fn, [started, *inputs], outputs, concurrency_id=MODELS, **kwargs
    )


def _since(started, begun: float) -> str:
    """ "12.7 s since you clicked" (an API call carries no click time: the time since the call began)."""
    if started:
        return f"{time.time() - float(started):.1f} s since you clicked"
    return f"{time.time() - begun:.1f} s"


def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mmtok-ui-"))


# ----------------------------------------------------------------------------- Generate


@functools.lru_cache(maxsize=4)
def _generator(name: str):
    from mmtok.generation.pipeline import GenerationPipeline

    return GenerationPipeline(name, device=DEVICE["name"])


FAMILIES = {
    "XAR": "xAR (next-entity flow matching)",
    "ECAR": "ECAR (multistage continuous AR)",
    "ELM": "ELM (binary tokens, autoregressive)",
    "DiTBaseline": "DiT (diffusion baseline)",
}
PROGRESS_UNIT = {"XAR": "part", "ECAR": "stage", "ELM": "token", "DiTBaseline": "part"}


@functools.lru_cache(maxsize=1)
def generator_info() -> dict[str, dict[str, Any]]:
    """Each shipped generator: condition, family, a one-line label with its measured accuracy (from its
    card's metrics) and a longer 'about' text; best text-to-image model first."""
    from mmtok import hub

    out = {}
    for m in mmtok.list_models():
        if m.get("task") != "image-generator":
            continue
        cond = hub.read_config(Path(m["source"])).get("condition")
        met, cls = m.get("metrics", {}), m.get("class", "")
        family = FAMILIES.get(cls, cls)
        if cond == "text":
            one, two, held = (
                met.get("seen/1obj/exact"),
                met.get("seen/2obj/exact"),
                met.get("heldout/1obj/exact"),
            )
            label = f"{m['name']} - text to shapes scene, one object right {_pct(one)}"
            about = (
                f"**{m['name']}**: {family}, a prompt in the shapes grammar to a 64x64 scene. Measured "
                f"(its card, 256 prompts per group): the whole scene right for {_pct(one)} of one-object "
                f"prompts ({_pct(held)} for held-out combinations) and {_pct(two)} of two-object prompts."
            )
            rank = (0, -(one or 0))
        else:
            acc = met.get("accuracy")
            label = f"{m['name']} - handwritten digit by class, {_pct(acc)} right"
            about = (
                f"**{m['name']}**: {family}, draws the handwritten digit (0-9) you pick as the class; "
                f"{_pct(acc)} of its images are judged to be that digit (its card)."
            )
            rank = (1, -(acc or 0))
        steps = "ignored: ELM picks tokens" if cls == "ELM" else None
        out[m["name"]] = {
            "condition": cond,
            "class": cls,
            "label": label,
            "about": about,
            "rank": rank,
            "steps": steps,
        }
    return dict(sorted(out.items(), key=lambda kv: kv[1]["rank"]))


def model_changed(model):
    """Show the fields that apply to ``model``: the prompt (and its vocabulary) for text models, the
    class for class models; 'steps' greys out where the model has none."""
    info = generator_info().get(model or "", {})
    text = info.get("condition") == "text"
    return (
        gr.Textbox(visible=text),
        gr.Accordion(visible=text),
        gr.Number(visible=info.get("condition") == "class"),
        gr.Slider(interactive=not info.get("steps")),
        info.get("about", ""),
    )


def generate(started, model, prompt, class_label, n, seed, steps, cfg, progress=gr.Progress()):
    from mmtok.generation.pipeline import GenerationPipeline

    begun = time.time()
    if not model:
        raise _fail("No generator is available: train one (mmtok train configs/xar-shapes64.yaml).")
    try:
        loaded = _generator.cache_info().currsize
        pipe = _generator(model)
        load = time.time() - begun if _generator.cache_info().currsize > loaded else 0.0
        text = prompt if pipe.condition == "text" else None
        try:  # a cleared number field arrives as None
            label = int(class_label) if pipe.condition == "class" else None
            n, seed, steps, cfg = int(n), int(seed), int(steps), float(cfg)
        except (TypeError, ValueError, OverflowError):
            raise _fail("Class, images, seed, steps and guidance must be numbers.") from None
        unit = PROGRESS_UNIT.get(type(pipe.model).__name__, "part")
        progress(0, desc="generating")
        result = pipe(
            prompt=text,
            class_label=label,
            n=n,
            seed=seed,
            steps=steps,
            cfg=cfg,
            progress=lambda done, total: progress(done / total, desc=f"drawing {unit} {done} of {total}"),
        )
        manifest = GenerationPipeline.save(result, _workdir())
    except MmtokError as e:
        raise _error(e) from None
    wait = f"queue wait {begun - float(started):.1f} s, " if started else ""
    loading = f"model load {load:.1f} s, " if load else ""
    info = (
        f"{len(result.images)} image(s), {_since(started, begun)} ({wait}{loading}"
        f"sampling {result.timings['sample']:.2f} s)"
    )
    if result.note:  # words the model never saw: say so instead of silently ignoring them
        info += f"\n\n**Note:** {result.note}"
    return manifest["images"], info


# ----------------------------------------------------------------------------- Tokenize


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from mmtok.tokenizers.pipeline import TokenizePipeline

    return TokenizePipeline(name, device=DEVICE["name"])


def tokenize(started, path, model):
    from mmtok.data import to_uint8
    from mmtok.data.imagefile import read_image
    from mmtok.tokenizers.pipeline import code_grid_image

    begun = time.time()
    if not path:
        raise _fail("Upload an image first.")
    if not model:
        raise _fail("No tokenizer is available.")
    try:
        pipe = _tokenizer(model)
        image = read_image(path)  # decodes the content; refuses non-images, empty and huge files
        rec = pipe.reconstruct(image)  # centre-crops to multiples of the tokenizer's factor
    except MmtokError as e:
        raise _error(e, path) from None
    grid = None
    if pipe.discrete:  # binary codes: show them as a picture
        grid = to_uint8(code_grid_image(rec.tokens, pipe.model.num_bits))
    shape = "x".join(map(str, rec.tokens.shape))
    info = f"PSNR {rec.psnr:.2f} dB, SSIM {rec.ssim:.4f}, tokens {shape} ({_since(started, begun)})"
    return to_uint8(rec.image), to_uint8(rec.reconstruction), info, grid


# ----------------------------------------------------------------------------- CLIP


@functools.lru_cache(maxsize=4)
def _clip(name: str):
    from mmtok.clip.pipeline import ClipPipeline

    return ClipPipeline(name, device=DEVICE["name"])


def _labels(text: str) -> list[str]:
    parts = [p.strip() for line in (text or "").splitlines() for p in line.split(";")]
    return [p for p in parts if p]


def clip_classify(started, path, labels_text, model):
    import pandas as pd

    from mmtok.clip.pipeline import DOMAIN_TEXT

    if not path:
        raise _fail("Upload an image first.")
    labels = _labels(labels_text)
    if not labels:
        raise _fail("Type at least one label (one per line).")
    try:
        result = _clip(model).classify([path], labels)[0]
    except MmtokError as e:
        raise _error(e, path) from None
    frame = pd.DataFrame({"label": list(result["scores"]), "probability": list(result["scores"].values())})
    text = (
        f"Best: **{result['label']}** ({100 * result['score']:.1f}% of the probability shared among your "
        f"labels; cosine similarity {result['similarity']:.2f})"
    )
    if not result["familiar"]:  # a softmax always names a winner: say when it means little
        text += (
            f"\n\n**This image looks unlike anything the model was trained on** (familiarity "
            f"{result['familiarity']:.2f}; its held-out test images score at least "
            f"{result['familiar_threshold']:.2f}). It knows {DOMAIN_TEXT}: the label above is a guess."
        )
    return frame, text


@functools.lru_cache(maxsize=1)
def sample_gallery() -> str:
    """A folder of sample images to search: held-out shapes scenes and test digits (made once)."""
    from mmtok.data import build_dataset
    from mmtok.data.imagefile import write_png

    folder = _workdir() / "gallery"
    shapes, digits = (
        build_dataset("shapes", "heldout", resolution=64),
        build_dataset("digits", "test", resolution=64),
    )
    for i in range(48):
        write_png(shapes[i]["image"], folder / f"scene_{i:02d}.png")
    for i in range(24):
        write_png(digits[i]["image"], folder / f"digit_{i:02d}.png")
    return str(folder)


@functools.lru_cache(maxsize=1)
def gallery_query() -> str:
    """A search text with a true match in the sample gallery: the first one-object held-out scene."""
    from mmtok.data import build_dataset
    from mmtok.data.shapes import COLOURS, SHAPES, SIZES

    scenes = build_dataset("shapes", "heldout", resolution=64, render=False)
    for i in range(48):
        item = scenes[i]
        if item["n_objects"] == 1:
            slot = int(item["shape"].nonzero()[0])
            shape, colour, size = (int(item[k][slot]) - 1 for k in ("shape", "colour", "size"))
            return f"a {SIZES[size]} {COLOURS[colour]} {SHAPES[shape]}"
    return "a handwritten digit 3"


def clip_search(text, model, top):
    if not text or not text.strip():
        raise _fail("Type a text to search for.")
    try:
        found = _clip(model).search(sample_gallery(), text, top=int(top))
    except MmtokError as e:
        raise _error(e) from None
    return [(r["path"], f"{r['score']:.3f}") for r in found["results"]]


# ----------------------------------------------------------------------------- Compress


@functools.lru_cache(maxsize=2)
def _compressor(name: str):
    from mmtok.compression.pipeline import CompressPipeline

    return CompressPipeline(name, device=DEVICE["name"])


def compress(started, path, model, method, keep, labels_text):
    """Keep-map overlay, tokens kept, time, and the top labels before and after compression."""
    if not path:
        raise _fail("Upload an image first.")
    if not model:
        raise _fail("No CLIP model is available to compress.")
    try:
        labels = _labels(labels_text or "") or None
        r = _compressor(model).run(path, method=method, keep=float(keep), labels=labels, top=3)
    except MmtokError as e:
        raise _error(e, path) from None
    rows = [
        [i + 1, b["label"], round(b["prob"], 3), a["label"], round(a["prob"], 3)]
        for i, (b, a) in enumerate(zip(r["top_before"], r["top_after"], strict=False))
    ]
    layer = "before the first block" if r["layer"] == 0 else f"after block {r['layer']}"
    info = (
        f"**{r['tokens_kept']} of {r['tokens_total']} tokens kept** ({method}, keep {float(keep):g}, "
        f"compressed {layer}): image tower {1000 * r['seconds_full']:.1f} ms -> "
        f"{1000 * r['seconds_compressed']:.1f} ms (median of 5); best label "
        f"{'unchanged' if r['same_top1'] else 'changed'}, embedding cosine {r['cosine']:.3f}.\n\n"
        "*The image tower* is the CLIP half that turns the image into one vector: it cuts the image into "
        "8x8-pixel patches (tokens) and runs them through transformer blocks. Compression drops or merges "
        "tokens so the later blocks have fewer to process. One 64-token image takes a few milliseconds "
        "either way, and the compressor's own work can cost more than it saves; on batches of 64 images "
        "TCC runs 1.47x faster at keep 0.5 (docs/compression.md)."
    )
    return np.asarray(r["overlay"].convert("RGB")), info, rows


# ----------------------------------------------------------------------------- PET/CT


def _case_state(pet_path: str, ct_path: str | None, report: str) -> dict[str, Any]:
    from mmtok.grounding.io import check_same_grid, load_pet, load_volume

    pet, _ = load_pet(pet_path)
    ct = load_volume(ct_path, "CT") if ct_path else None
    if ct is not None:
        check_same_grid(pet, ct)
    return {
        "pet": pet_path,
        "ct": ct_path,
        "report": report,
        "mask": None,
        "mask_file": None,
        "shape": tuple(int(s) for s in pet.shape),
    }


def load_sample(seed):
    from mmtok.grounding.phantom import write_phantoms

    folder = write_phantoms(_workdir(), 1, seed=int(seed))[0]
    state = _case_state(str(folder / "SUV.nii.gz"), str(folder / "CTres.nii.gz"), "")
    report = (folder / "report.txt").read_text()
    state["report"] = report
    return (
        state,
        report,
        *_viewer_updates(state),
        f"Sample phantom (seed {int(seed)}) loaded: {folder.name}",
        _sentence_choices(report),
    )


def load_upload(pet_file, ct_file, report):
    """PET and CT uploads, recognised by content: NIfTI (any name, plain or gzipped) or a zip of one
    DICOM series (PET -> SUVbw, CT -> HU). A CT on another grid is resampled onto the PET grid."""
    from mmtok.grounding.io import read_upload, resample_to_pet, same_grid, save_volume

    if not pet_file:
        raise _fail("Upload a PET (SUV) NIfTI or a zipped DICOM PET series, or load a sample phantom.")
    work, notes = _workdir(), []
    try:
        pet = read_upload(_file(pet_file), "PET", work)
        pet_path = save_volume(np.asarray(pet.dataobj, np.float32), pet, work / "SUV.nii.gz")
        ct_path = None
        if ct_file:
            ct = read_upload(_file(ct_file), "CT", work)
            if not same_grid(pet, ct):
                ct, _ = resample_to_pet(ct, pet), notes.append("CT resampled onto the PET grid")
            ct_path = save_volume(np.asarray(ct.dataobj, np.float32), pet, work / "CTres.nii.gz")
        state = _case_state(str(pet_path), str(ct_path) if ct_path else None, report or "")
    except MmtokError as e:
        raise _error(e) from None
    msg = "Volumes loaded" + (f" ({'; '.join(notes)})" if notes else "") + "."
    return (state, report or "", *_viewer_updates(state), msg, _sentence_choices(report or ""))


def _file(f) -> str:
    return str(f) if isinstance(f, str | Path) else getattr(f, "name", str(f))


def _sentence_choices(report: str):
    """The report's finding sentences (those with an SUV and a slice), to pick one for grounding."""
    from mmtok.grounding.reports import parse_report

    try:
        sentences = [f.sentence for f in parse_report(report)] if report.strip() else []
    except MmtokError:
        sentences = []
    return gr.Dropdown(choices=list(dict.fromkeys(sentences)), value=None)


SLICE_LABEL = "axial image, numbered as reports number them: 1 = the top-most (head) image"


def _viewer_updates(state):
    n = _axial(state)[1]
    mid = (n + 1) // 2
    return gr.Slider(minimum=1, maximum=n, value=mid, step=1, label=f"{SLICE_LABEL} (of {n})"), *render(
        state, mid
    )


def _axial(state) -> tuple[int, int, bool]:
    """(axial array axis, number of axial images, head towards higher indices?) of the loaded case."""
    from mmtok.grounding.io import axial_axis, load_volume

    axis, head_up = axial_axis(load_volume(state["pet"], "PET").affine)
    return axis, state["shape"][axis], head_up


def _report_number(state, index: int) -> int:
    """The report's image number (1 = top-most) of an axial array index: what the slider shows."""
    from mmtok.grounding.io import index_to_report_slice

    _, n, head_up = _axial(state)
    return index_to_report_slice(int(index), n, head_up)


def render(state, number):
    """Axial image ``number`` (as reports number them: 1 = top-most) and the coronal MIP of the case
    (``mmtok.grounding.viewer``)."""
    from mmtok.grounding.io import load_volume
    from mmtok.grounding.viewer import views

    if not state:
        return None, None
    pet = load_volume(state["pet"], "PET")
    suv = np.asarray(pet.dataobj, dtype=np.float32)
    ct = np.asarray(load_volume(state["ct"], "CT").dataobj, dtype=np.float32) if state.get("ct") else None
    mask = np.load(state["mask"]) if state.get("mask") else None
    return views(suv, ct, mask, pet.affine, number)


def weaklabel(state, report):
    from mmtok.grounding.io import load_pet, load_volume
    from mmtok.grounding.reports import parse_report
    from mmtok.grounding.weaklabel import weak_label

    if not state:
        raise _fail("Load a case first (sample phantom or upload).")
    if not report or not report.strip():
        raise _fail("Paste a report first.")
    try:
        findings = parse_report(report)
        if not findings:
            raise MmtokError("the report has no findings (no sentence with both an SUV and a slice number)")
        pet, _ = load_pet(state["pet"])
        ct = load_volume(state["ct"], "CT") if state.get("ct") else None
        results = weak_label(findings, pet, ct)
    except MmtokError as e:
        raise _error(e) from None
    work, rows, union, masks = _workdir(), [], None, {}
    for n, r in enumerate(results, 1):
        m = r.pop("_mask", None)
        if m is not None:
            union = m.copy() if union is None else (union | m)
            masks[n] = str(work / f"finding_{n:02d}.npy")
            np.save(masks[n], m.astype(np.uint8), allow_pickle=False)
        rows.append(
            [
                n,
                r["status"],
                r.get("suvmax"),
                r.get("slice"),
                r.get("side"),
                r.get("organ"),
                r.get("volume_ml"),
                r["sentence"],
            ]
        )
    state = dict(state, findings=results, finding_masks=masks, mask=None, mask_file=None)
    mask_file = None
    if union is not None:
        state, mask_file = _store_mask(state, union)
    choices = [f"{n}: {results[n - 1]['sentence']}" for n in masks]
    return state, rows, gr.Dropdown(choices=choices, value=None), mask_file


def _store_mask(state, mask):
    from mmtok.grounding.io import load_volume, save_mask

    work = _workdir()
    npy = work / "mask.npy"
    np.save(npy, mask.astype(np.uint8), allow_pickle=False)
    nii = save_mask(mask.astype(bool), load_volume(state["pet"], "PET"), work / "mask.nii.gz")
    return dict(state, mask=str(npy), mask_file=str(nii)), str(nii)


def show_finding(state, choice):
    """One located finding: its mask alone, the slider at its peak, its mask for download."""
    if not state or not choice or not state.get("finding_masks"):
        # The dropdown is reset (to no pick) after every weak-labelling: that must not wipe the mask
        # download the labelling just made.
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    n = int(choice.split(":", 1)[0])
    mask = np.load(state["finding_masks"][n]).astype(bool)
    state, nii = _store_mask(state, mask)
    peak = _report_number(state, state["findings"][n - 1]["peak_voxel"][_axial(state)[0]])
    return state, gr.Slider(value=peak), *render(state, peak), nii


def _against_the_sentence(state, sentence: str, mask: np.ndarray, peak_suv: float) -> str | None:
    """Why the mask cannot be the lesion the sentence describes, from the sentence's own SUVmax and
    image number (report sentences carry both; the weak labeller's match rule: SUV within 10%, the
    lesion spanning the image); None if the sentence states neither or the mask agrees."""
    from mmtok.grounding.reports import parse_sentence

    finding = parse_sentence(sentence, min_suv=0.0)
    if finding is None or (finding.suvmax is None and finding.slice is None):
        return None
    axis = _axial(state)[0]
    indices = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
    images = sorted(_report_number(state, i) for i in (indices.min(), indices.max()))
    wrong = []
    if finding.suvmax is not None and abs(peak_suv - finding.suvmax) > 0.1 * finding.suvmax:
        wrong.append(f"the sentence says SUVmax {finding.suvmax:g}, this mask peaks at {peak_suv:.2f}")
    if finding.slice is not None and not images[0] <= finding.slice <= images[1]:
        wrong.append(
            f"the sentence says image {finding.slice}, this mask spans images {images[0]}-{images[1]}"
        )
    return "; ".join(wrong) + "." if wrong else None


def _grounding_f1(model: str) -> float | None:
    return _metrics(model).get("f1_suv_match")


def ground_sentence(started, state, sentence, model, number, progress=gr.Progress(track_tqdm=True)):
    """The lesion one sentence describes (ConTEXTual Net): mask, slider at its peak, NIfTI, summary.
    A sentence naming no place the model was trained on, or a low-confidence mask, is answered "no
    lesion matches" rather than shown as a match."""
    begun = time.time()
    from mmtok.grounding.pipeline import MIN_CONFIDENCE, check_text, ground, sentence_place

    if not state:
        raise _fail("Load a case first (sample phantom or upload).")
    if not model:
        raise _fail("No grounding model: train one (bash configs/contextual3d-phantom/replay.sh).")
    if not state.get("ct"):
        raise _fail("Grounding reads SUV and CT: upload the CT as well.")
    try:
        place, known = sentence_place(check_text(sentence), model, DEVICE["name"])
        if place not in known:  # answered at once, without the 30 s pass
            named = f"it names {place}" if place else "it names no organ or lymph-node station"
            text = (
                f"**No lesion matches this sentence**: {named}, and the model was trained only on these "
                f"places: {', '.join(known)}."
            )
            state = dict(state, mask=None, mask_file=None)
            return state, gr.skip(), *render(state, number), None, text
        progress(0, desc="segmenting: a sliding window over the body")
        result = ground(
            state["pet"], state["ct"], sentence, model=model, device=DEVICE["name"], progress=True
        )
    except MmtokError as e:
        raise _error(e) from None
    info, took = result.info, f"{model}, {_since(started, begun)}"
    if info["peak_voxel"] is None or info["confidence"] < MIN_CONFIDENCE:
        why = (
            "no voxel reached probability 0.5"
            if info["peak_voxel"] is None
            else f"its best candidate peaks at probability {info['confidence']:.2f} < {MIN_CONFIDENCE}"
        )
        text, mask = f"**No lesion matches this sentence**: {why}. ({took})", None
    else:
        mask = result.mask
        number = _report_number(state, info["peak_voxel"][_axial(state)[0]])
        f1 = _grounding_f1(model)
        caveat = (
            f" This model picks the lesion a sentence names in {_pct(f1)} of held-out queries "
            "(SUV-match F1, its card) and favours the hottest lesion: check the image."
            if f1 is not None
            else ""
        )
        text = (
            f"**Match** (confidence {info['confidence']:.2f}, the peak probability): {info['voxels']} "
            f"voxels, {info['volume_ml']:.1f} mL, peak SUV {info['peak_suv']:.2f} on image {number}. "
            f"({took}){caveat}"
        )
        clash = _against_the_sentence(state, sentence, result.mask, info["peak_suv"])
        if clash:  # the sentence's own numbers say the model picked another lesion
            text = (
                f"**Probably another lesion** (confidence {info['confidence']:.2f}, peak SUV "
                f"{info['peak_suv']:.2f} on image {number}): {clash} ({took}){caveat}"
            )
    if mask is None:
        state, nii = dict(state, mask=None, mask_file=None), None
    else:
        state, nii = _store_mask(state, mask)
    return state, gr.Slider(value=number), *render(state, number), nii, text


def _pick_sentence(choice):
    """A picked sentence (or finding "n: sentence") into the text box; a cleared pick (the dropdowns are
    reset whenever a case is loaded or labelled) leaves what the user typed alone."""
    if not choice:
        return gr.skip()
    return choice.split(": ", 1)[1] if ": " in choice[:6] else choice


# ----------------------------------------------------------------------------- the app


def _metrics(name: str) -> dict[str, Any]:
    return next((m.get("metrics", {}) for m in mmtok.list_models() if m["name"] == name), {})


def knows(tab: str) -> str:
    """The "what this tab knows" panel: the test beds the shipped models trained on and their measured
    figures, read from the model cards (so they change when a model does)."""
    if tab == "generate":
        return (
            "The shipped generators were trained on two procedural test beds, at 64x64 pixels: scenes "
            "of 1-3 coloured shapes on a 3x3 grid (8 shapes, 8 colours, 2 sizes, captions such as "
            "*a big red circle in the middle*) and handwritten digits (by class, 0-9). A text model "
            "understands only the words listed under the prompt; it draws nothing else (no cats, no "
            "photos). Accuracy is the fraction of images a judge network reads as the whole prompt."
        )
    if tab == "tokenize":
        rows = [
            f"**{n}**: shapes {m.get('psnr_shapes', float('nan')):.1f} dB, digits "
            f"{m.get('psnr_digits', float('nan')):.1f} dB, photos {m.get('psnr_photos', float('nan')):.1f} dB"
            for n in _models("image-tokenizer")
            if (m := _metrics(n))
        ]
        return (
            "Tokenizers turn an image into a grid of tokens (8x8 pixels each) and back. They were "
            "trained on shapes scenes, digits and 14 photographs; reconstruction PSNR on their test "
            "splits: " + "; ".join(rows) + ". Images other than these reconstruct less well."
        )
    if tab == "clip":
        rows = [
            f"**{n}**: names a held-out object {_pct(m.get('shapes_heldout/object_acc'))} of the time "
            f"(128-way), a digit {_pct(m.get('digits_test/accuracy'))}"
            for n in _models(CLIP_TASK)
            if (m := _metrics(n))
        ]
        return (
            "The CLIPs score how well texts match an image. They were trained on 64x64 shapes scenes and "
            "handwritten digits with their captions; on anything else (photos) the page says the answer "
            "is a guess. Zero-shot figures from their cards: " + "; ".join(rows) + "."
        )
    if tab == "compress":
        return (
            "Compression runs inside a CLIP's image tower (the CLIP tab's models): a 64x64 image is 64 "
            "tokens of 8x8 pixels; a method keeps the given fraction, by merging similar tokens (TCC, "
            "ToMe), by a predicted relevance (explain), at random, or by pooling. The labels before and "
            "after show what the compressed tower still reads."
        )
    f1 = _metrics("contextual3d-phantom").get("f1_suv_match")
    return (
        "Weak labels: a report's finding sentences (with an SUV and an image number) are matched to the "
        "lesion at that SUV on that image. Grounding: ConTEXTual Net 3D segments the lesion a sentence "
        "describes; it was trained on procedural whole-body phantoms (4 mm) and their reports, on these "
        "places: lung lobes, liver, spleen, bone and vertebrae, and cervical, axillary, hilar, "
        "subcarinal, para-aortic, iliac and inguinal nodes, left or right. It picks the named lesion in "
        f"{_pct(f1)} of held-out queries (SUV-match F1, its card). Image numbers count from the head "
        "(1 = top-most), as reports do."
    )


def _panel(tab: str) -> None:
    with gr.Accordion("What this tab knows", open=False, elem_id=f"knows-{tab}"):
        gr.Markdown(knows(tab))


def build_demo(device: str = "cpu") -> gr.Blocks:
    DEVICE["name"] = device
    generators, tokenizers = generator_info(), _models("image-tokenizer")
    clips, groundings = _models(CLIP_TASK), _models("grounding")
    first = next(iter(generators), None)  # the best text-to-image model (generator_info's order)
    with gr.Blocks(title="mmtok", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# mmtok\nMultimodal generation and grounding on shared tokenizers — runs offline on a CPU."
        )
        with gr.Tab("Generate"):
            if not generators:
                gr.Markdown("No generator is shipped yet: `mmtok train configs/xar-shapes64.yaml` makes one.")
            _panel("generate")
            with gr.Row():
                with gr.Column():
                    g_model = gr.Dropdown(
                        [(v["label"], k) for k, v in generators.items()],
                        value=first,
                        label="model",
                        elem_id="gen-model",
                    )
                    g_about = gr.Markdown(generators[first]["about"] if first else "", elem_id="gen-about")
                    text = bool(first) and generators[first]["condition"] == "text"
                    g_prompt = gr.Textbox(
                        label="prompt",
                        value="a big red circle in the middle",
                        elem_id="gen-prompt",
                        visible=text,
                    )
                    with gr.Accordion("words the model knows", open=False, visible=text) as g_vocab:
                        gr.Markdown(" ".join(vocabulary()), elem_id="gen-vocabulary")
                    g_class = gr.Number(
                        label="digit to draw (0-9)",
                        value=7,
                        precision=0,
                        elem_id="gen-class",
                        visible=bool(first) and generators[first]["condition"] == "class",
                    )
                    with gr.Row():
                        g_n = gr.Slider(1, 16, value=4, step=1, label="images")
                        g_seed = gr.Number(label="seed", value=0, precision=0)
                    with gr.Row():
                        g_steps = gr.Slider(
                            1,
                            100,
                            value=20,
                            step=1,
                            label="denoising steps per part",
                            info="xAR and ECAR draw an image part by part (xAR: 4 groups of tokens; ECAR: "
                            "coarse-to-fine stages) and denoise each part this many steps; DiT denoises the "
                            "whole image this many steps; ELM picks tokens and has none.",
                        )
                        g_cfg = gr.Slider(
                            0,
                            10,
                            value=3.0,
                            step=0.5,
                            label="guidance",
                            info="how strongly to follow the prompt or class (0: ignore it)",
                        )
                    g_run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                with gr.Column():
                    g_gallery = gr.Gallery(label="images", columns=4, format="png", elem_id="gen-gallery")
                    g_info = gr.Markdown(elem_id="gen-info")
            g_model.change(
                model_changed,
                [g_model],
                [g_prompt, g_vocab, g_class, g_steps, g_about],
                api_visibility="private",
            )
            _timed(
                g_run,
                generate,
                [g_model, g_prompt, g_class, g_n, g_seed, g_steps, g_cfg],
                [g_gallery, g_info],
                clear=[g_gallery, g_info],
                api_name="generate",
            )

        with gr.Tab("Tokenize"):
            _panel("tokenize")
            with gr.Row():
                with gr.Column():
                    t_image = image_input(label="image", elem_id="tok-input")
                    t_model = gr.Dropdown(
                        tokenizers, value=_default(tokenizers, "kl-f8-64"), label="tokenizer"
                    )
                    t_run = gr.Button("Tokenize", variant="primary", elem_id="tok-run")
                with gr.Column():
                    with gr.Row():
                        t_orig = gr.Image(label="original", format="png")
                        t_rec = gr.Image(label="reconstruction", format="png")
                    t_info = gr.Markdown(elem_id="tok-info")
                    t_grid = gr.Image(label="code grid (binary tokenizers)", format="png")
            t_outs = [t_orig, t_rec, t_info, t_grid]
            _timed(t_run, tokenize, [t_image, t_model], t_outs, clear=t_outs, api_name="tokenize")

        with gr.Tab("CLIP"):
            _panel("clip")
            c_model = gr.Dropdown(clips, value=_default(clips, "lightclip-shapes64"), label="model")
            with gr.Row():
                with gr.Column():
                    c_image = image_input(label="image", elem_id="clip-input")
                    c_labels = gr.Textbox(
                        label="labels (one per line)", lines=4, elem_id="clip-labels", value=DEFAULT_LABELS
                    )
                    c_run = gr.Button("Classify", variant="primary", elem_id="clip-classify")
                with gr.Column():
                    c_plot = gr.BarPlot(x="label", y="probability", label="probabilities", y_lim=[0, 1])
                    c_best = gr.Markdown(elem_id="clip-best")
            with gr.Row():
                c_text = gr.Textbox(
                    label="search the sample gallery (48 held-out scenes, 24 digits)",
                    value=gallery_query(),
                    scale=3,
                    elem_id="clip-query",
                )
                c_top = gr.Slider(1, 12, value=6, step=1, label="top")
                c_search = gr.Button("Search", elem_id="clip-search")
            c_gallery = gr.Gallery(
                label="best matches (score)", columns=6, format="png", elem_id="clip-gallery"
            )
            _timed(
                c_run,
                clip_classify,
                [c_image, c_labels, c_model],
                [c_plot, c_best],
                clear=[c_plot, c_best],
                api_name="clip_classify",
            )
            c_search.click(clip_search, [c_text, c_model, c_top], [c_gallery], concurrency_id=MODELS)

        with gr.Tab("Compress"):
            _panel("compress")
            with gr.Row():
                with gr.Column():
                    k_image = image_input(label="image", elem_id="cmp-input")
                    k_model = gr.Dropdown(
                        clips, value=_default(clips, "lightclip-shapes64"), label="CLIP model"
                    )
                    k_method = gr.Radio(COMPRESS_METHODS, value="tcc", label="method")
                    k_keep = gr.Slider(0.1, 1.0, value=0.5, step=0.05, label="keep fraction")
                    k_labels = gr.Textbox(
                        label="labels (one per line; empty: every shapes object label)", lines=3
                    )
                    k_run = gr.Button("Compress", variant="primary", elem_id="cmp-run")
                with gr.Column():
                    k_overlay = gr.Image(
                        label="keep-map: hatched red = dropped; outlined = one kept token "
                        "(merged patches share a tint)",
                        format="png",
                        elem_id="cmp-overlay",
                    )
                    k_info = gr.Markdown(elem_id="cmp-info")
                    k_table = gr.Dataframe(
                        headers=["rank", "before", "p", "after", "p"], label="top labels", elem_id="cmp-table"
                    )
            k_outs = [k_overlay, k_info, k_table]
            _timed(
                k_run,
                compress,
                [k_image, k_model, k_method, k_keep, k_labels],
                k_outs,
                clear=k_outs,
                api_name="compress",
            )

        with gr.Tab("PET/CT"):
            _panel("petct")
            state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    p_seed = gr.Number(label="phantom seed", value=0, precision=0)
                    p_sample = gr.Button("Load a sample phantom", elem_id="pet-sample")
                    p_pet = gr.File(
                        label="PET: SUV NIfTI or zipped DICOM series", type="filepath", elem_id="pet-upload"
                    )
                    p_ct = gr.File(
                        label="CT: NIfTI or zipped DICOM series (optional)",
                        type="filepath",
                        elem_id="ct-upload",
                    )
                    p_load = gr.Button("Load uploads")
                    p_report = gr.Textbox(label="report", lines=8, elem_id="pet-report")
                    p_label = gr.Button("Weak-label the report", variant="primary", elem_id="pet-weaklabel")
                    p_status = gr.Markdown(elem_id="pet-status")
                with gr.Column(scale=2):
                    p_slice = gr.Slider(1, 2, value=1, step=1, label=SLICE_LABEL, elem_id="pet-slice")
                    with gr.Row():
                        p_axial = gr.Image(
                            label="axial (CT grey + PET hot + mask green)", format="png", elem_id="pet-axial"
                        )
                        p_coronal = gr.Image(
                            label="coronal MIP (blue ticks: the axial image's level)",
                            format="png",
                            elem_id="pet-coronal",
                        )
                    p_table = gr.Dataframe(
                        headers=["#", "status", "SUVmax", "image", "side", "organ", "volume mL", "sentence"],
                        label="findings (image: the report's number, 1 = top-most)",
                        elem_id="pet-findings",
                        wrap=True,
                    )
                    p_finding = gr.Dropdown([], label="show one finding", elem_id="pet-finding")
                    with gr.Group():
                        p_pick = gr.Dropdown([], label="pick a report sentence", elem_id="ground-pick")
                        p_sentence = gr.Textbox(
                            label="or type a sentence to ground",
                            elem_id="ground-text",
                            placeholder="e.g. Hypermetabolic left axillary node.",
                        )
                        with gr.Row():
                            g_default = _default(groundings, "contextual3d-phantom")
                            p_gmodel = gr.Dropdown(groundings, value=g_default, label="grounding model")
                            p_ground = gr.Button("Ground it", variant="primary", elem_id="ground-run")
                        p_ginfo = gr.Markdown(elem_id="ground-info")
                    p_mask = gr.File(label="mask (NIfTI, PET grid)", elem_id="pet-mask")
            outs = [state, p_report, p_slice, p_axial, p_coronal, p_status, p_pick]
            p_sample.click(load_sample, [p_seed], outs)
            p_load.click(load_upload, [p_pet, p_ct, p_report], outs)
            p_slice.release(render, [state, p_slice], [p_axial, p_coronal], api_visibility="private")
            p_label.click(
                _weaklabel_and_render,
                [state, p_report, p_slice],
                [state, p_table, p_finding, p_mask, p_axial, p_coronal],
                concurrency_id=MODELS,
                api_name="weaklabel",
            )
            p_finding.change(
                show_finding,
                [state, p_finding],
                [state, p_slice, p_axial, p_coronal, p_mask],
                api_visibility="private",
            )
            p_finding.change(_pick_sentence, [p_finding], [p_sentence], api_visibility="private")
            p_pick.change(_pick_sentence, [p_pick], [p_sentence], api_visibility="private")
            _timed(
                p_ground,
                ground_sentence,
                [state, p_sentence, p_gmodel, p_slice],
                [state, p_slice, p_axial, p_coronal, p_mask, p_ginfo],
                clear=[p_ginfo],
                api_name="ground_sentence",
            )
    return demo


def _weaklabel_and_render(state, report, index):
    state, rows, dropdown, mask_file = weaklabel(state, report)
    state = dict(state, report_used=report)
    return (state, rows, dropdown, mask_file, *render(state, index))


def launch(host: str = "127.0.0.1", port: int = 7860, device: str = "cpu", **kwargs):
    """Serve the UI; binds to localhost by default and limits upload size."""
    demo = build_demo(device)
    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    return demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=MAX_UPLOAD,
        share=False,
        enable_monitoring=False,
        **kwargs,
    )


if __name__ == "__main__":
    launch()
