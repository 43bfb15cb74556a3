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


def _error(e: Exception) -> gr.Error:
    return gr.Error(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mmtok-ui-"))


# ----------------------------------------------------------------------------- Generate


@functools.lru_cache(maxsize=4)
def _generator(name: str):
    from mmtok.generation.pipeline import GenerationPipeline

    return GenerationPipeline(name, device=DEVICE["name"])


def generate(model, prompt, class_label, n, seed, steps, cfg, progress=gr.Progress()):
    from mmtok.generation.pipeline import GenerationPipeline

    if not model:
        raise gr.Error("No generator is available: train one (mmtok train configs/xar-shapes64.yaml).")
    try:
        pipe = _generator(model)
        text = prompt if pipe.condition == "text" else None
        try:  # a cleared number field arrives as None
            label = int(class_label) if pipe.condition == "class" else None
            n, seed, steps, cfg = int(n), int(seed), int(steps), float(cfg)
        except (TypeError, ValueError, OverflowError):
            raise gr.Error("Class, images, seed, steps and guidance must be numbers.") from None
        progress(0, desc="generating")
        result = pipe(
            prompt=text, class_label=label, n=n, seed=seed, steps=steps, cfg=cfg,
            progress=lambda done, total: progress(done / total, desc=f"entity {done}/{total}"),
        )  # fmt: skip
        manifest = GenerationPipeline.save(result, _workdir())
    except MmtokError as e:
        raise _error(e) from None
    info = (
        f"{len(result.images)} image(s) in {result.seconds:.2f} s (sampling {result.timings['sample']:.2f} s)"
    )
    if result.note:  # words the model never saw: say so instead of silently ignoring them
        info += f"\n\n**Note:** {result.note}"
    return manifest["images"], info


# ----------------------------------------------------------------------------- Tokenize


@functools.lru_cache(maxsize=4)
def _tokenizer(name: str):
    from mmtok.tokenizers.pipeline import TokenizePipeline

    return TokenizePipeline(name, device=DEVICE["name"])


def tokenize(path, model):
    from mmtok.data import to_uint8
    from mmtok.data.imagefile import read_image
    from mmtok.tokenizers.pipeline import code_grid_image

    if not path:
        raise gr.Error("Upload an image first.")
    if not model:
        raise gr.Error("No tokenizer is available.")
    try:
        pipe = _tokenizer(model)
        image = read_image(path)  # decodes the content; refuses non-images, empty and huge files
        rec = pipe.reconstruct(image)  # centre-crops to multiples of the tokenizer's factor
    except MmtokError as e:
        raise _error(e) from None
    grid = None
    if pipe.discrete:  # binary codes: show them as a picture
        grid = to_uint8(code_grid_image(rec.tokens, pipe.model.num_bits))
    shape = "x".join(map(str, rec.tokens.shape))
    info = f"PSNR {rec.psnr:.2f} dB, SSIM {rec.ssim:.4f}, tokens {shape}"
    return to_uint8(rec.image), to_uint8(rec.reconstruction), info, grid


# ----------------------------------------------------------------------------- CLIP


@functools.lru_cache(maxsize=4)
def _clip(name: str):
    from mmtok.clip.pipeline import ClipPipeline

    return ClipPipeline(name, device=DEVICE["name"])


def _labels(text: str) -> list[str]:
    parts = [p.strip() for line in (text or "").splitlines() for p in line.split(";")]
    return [p for p in parts if p]


def clip_classify(path, labels_text, model):
    import pandas as pd

    if not path:
        raise gr.Error("Upload an image first.")
    labels = _labels(labels_text)
    if not labels:
        raise gr.Error("Type at least one label (one per line).")
    try:
        result = _clip(model).classify([path], labels)[0]
    except MmtokError as e:
        raise _error(e) from None
    frame = pd.DataFrame({"label": list(result["scores"]), "probability": list(result["scores"].values())})
    return frame, f"Best: **{result['label']}** ({100 * result['score']:.1f}%)"


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


def clip_search(text, model, top):
    if not text or not text.strip():
        raise gr.Error("Type a text to search for.")
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


def compress(path, model, method, keep, labels_text):
    """Keep-map overlay, tokens kept, time, and the top labels before and after compression."""
    if not path:
        raise gr.Error("Upload an image first.")
    if not model:
        raise gr.Error("No CLIP model is available to compress.")
    try:
        labels = _labels(labels_text or "") or None
        r = _compressor(model).run(path, method=method, keep=float(keep), labels=labels, top=3)
    except MmtokError as e:
        raise _error(e) from None
    rows = [[i + 1, b["label"], round(b["prob"], 3), a["label"], round(a["prob"], 3)]
            for i, (b, a) in enumerate(zip(r["top_before"], r["top_after"], strict=False))]  # fmt: skip
    info = (f"**{r['tokens_kept']} of {r['tokens_total']} tokens kept** ({method}, keep {float(keep):g}, "
            f"from layer {r['layer']}): tower {1000 * r['seconds_full']:.1f} ms -> "
            f"{1000 * r['seconds_compressed']:.1f} ms; top-1 {'unchanged' if r['same_top1'] else 'changed'}, "
            f"embedding cosine {r['cosine']:.3f}")  # fmt: skip
    return np.asarray(r["overlay"].convert("RGB")), info, rows


# ----------------------------------------------------------------------------- PET/CT


def _case_state(pet_path: str, ct_path: str | None, report: str) -> dict[str, Any]:
    from mmtok.grounding.io import check_same_grid, load_pet, load_volume

    pet, _ = load_pet(pet_path)
    ct = load_volume(ct_path, "CT") if ct_path else None
    if ct is not None:
        check_same_grid(pet, ct)
    return {"pet": pet_path, "ct": ct_path, "report": report, "mask": None, "mask_file": None,
            "shape": tuple(int(s) for s in pet.shape)}  # fmt: skip


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
        raise gr.Error("Upload a PET (SUV) NIfTI or a zipped DICOM PET series, or load a sample phantom.")
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


def _viewer_updates(state):
    from mmtok.grounding.io import axial_axis, load_volume

    pet = load_volume(state["pet"], "PET")
    axis, _ = axial_axis(pet.affine)
    n = state["shape"][axis]
    mid = n // 2
    return gr.Slider(minimum=0, maximum=n - 1, value=mid, step=1), *render(state, mid)


def _load_arrays(state):
    from mmtok.grounding.io import axial_axis, load_volume, lr_axis

    pet = load_volume(state["pet"], "PET")
    suv = np.asarray(pet.dataobj, dtype=np.float32)
    ct = np.asarray(load_volume(state["ct"], "CT").dataobj, dtype=np.float32) if state.get("ct") else None
    hf, head_up = axial_axis(pet.affine)
    lr, left_up = lr_axis(pet.affine)
    return suv, ct, hf, head_up, lr, left_up


def _window(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _fuse(ct2d, suv2d, mask2d, window=(-160, 240)) -> np.ndarray:
    """CT in grey (soft-tissue window), PET as a hot overlay (SUV 0-10), the mask in green."""
    grey = _window(ct2d, *window) if ct2d is not None else np.zeros(suv2d.shape, dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    hot = np.clip(suv2d / 10.0, 0, 1)[..., None]
    rgb = rgb * (1 - 0.6 * hot) + 0.6 * hot * np.array([255.0, 80.0, 0.0])
    if mask2d is not None:
        m = mask2d[..., None].astype(np.float32)
        rgb = rgb * (1 - 0.5 * m) + 0.5 * m * np.array([0.0, 255.0, 0.0])
    return rgb.clip(0, 255).astype(np.uint8)


def _orient(
    plane: np.ndarray, rows_axis: int, cols_axis: int, rows_flip: bool, cols_flip: bool
) -> np.ndarray:
    """A 2D plane whose two remaining array axes are ``rows_axis`` < or > ``cols_axis`` -> rows x cols."""
    img = plane if rows_axis < cols_axis else plane.swapaxes(0, 1)
    img = img[::-1] if rows_flip else img
    return np.ascontiguousarray(img[:, ::-1] if cols_flip else img)


def render(state, index):
    """Axial slice ``index`` and the coronal MIP: CT + PET (+ mask), radiological view (patient's
    right on the image's left), head at the top of the coronal view."""
    if not state:
        return None, None
    suv, ct, hf, head_up, lr, left_up = _load_arrays(state)
    mask = np.load(state["mask"]) if state.get("mask") else None
    ap = 3 - hf - lr
    i = int(np.clip(int(index or 0), 0, suv.shape[hf] - 1))
    take = lambda a: None if a is None else np.take(a, i, axis=hf)  # noqa: E731
    axial = _fuse(take(ct), take(suv), take(mask))  # axes (lr, ap) in array order
    rest = sorted((lr, ap))
    axial = _orient(axial, rest.index(ap), rest.index(lr), False, not left_up)
    proj = lambda a, f: None if a is None else f(a, axis=ap)  # noqa: E731
    # The CT projection is a mean through air and tissue: a wider window than the axial view's.
    coronal = _fuse(proj(ct, np.mean), proj(suv, np.max), proj(mask, np.max), window=(-900, 100))
    rest = sorted((lr, hf))
    coronal = _orient(coronal, rest.index(hf), rest.index(lr), head_up, not left_up)
    return axial, coronal


def weaklabel(state, report):
    from mmtok.grounding.io import load_pet, load_volume
    from mmtok.grounding.reports import parse_report
    from mmtok.grounding.weaklabel import weak_label

    if not state:
        raise gr.Error("Load a case first (sample phantom or upload).")
    if not report or not report.strip():
        raise gr.Error("Paste a report first.")
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
        rows.append([n, r["status"], r.get("suvmax"), r.get("slice"), r.get("side"), r.get("organ"),
                     r.get("volume_ml"), r["sentence"]])  # fmt: skip
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
        return state, gr.Slider(), gr.Image(), gr.Image(), None
    from mmtok.grounding.io import axial_axis, load_volume

    n = int(choice.split(":", 1)[0])
    mask = np.load(state["finding_masks"][n]).astype(bool)
    state, nii = _store_mask(state, mask)
    axis, _ = axial_axis(load_volume(state["pet"], "PET").affine)
    peak = int(state["findings"][n - 1]["peak_voxel"][axis])
    return state, gr.Slider(value=peak), *render(state, peak), nii


def ground_sentence(state, sentence, model, index):
    """The lesion one sentence describes (ConTEXTual Net): mask, slider at its peak, NIfTI, summary."""
    from mmtok.grounding.io import axial_axis, load_volume
    from mmtok.grounding.pipeline import ground

    if not state:
        raise gr.Error("Load a case first (sample phantom or upload).")
    if not model:
        raise gr.Error("No grounding model: train one (mmtok train configs/contextual3d-phantom.yaml).")
    if not state.get("ct"):
        raise gr.Error("Grounding reads SUV and CT: upload the CT as well.")
    try:
        result = ground(state["pet"], state["ct"], sentence or "", model=model, device=DEVICE["name"])
    except MmtokError as e:
        raise _error(e) from None
    state, nii = _store_mask(state, result.mask)
    info = result.info
    if info["peak_voxel"] is not None:
        axis, _ = axial_axis(load_volume(state["pet"], "PET").affine)
        index = int(info["peak_voxel"][axis])
        text = (f"**{info['voxels']} voxels**, {info['volume_ml']:.1f} mL, peak SUV {info['peak_suv']:.2f} "
                f"at voxel {tuple(info['peak_voxel'])} — {info['seconds']:.1f} s ({model})")  # fmt: skip
    else:
        text = f"No lesion found for this sentence ({model}, {info['seconds']:.1f} s)."
    return state, gr.Slider(value=index), *render(state, index), nii, text


def _pick_sentence(choice):
    """A picked sentence (or finding "n: sentence") into the text box; a cleared pick (the dropdowns are
    reset whenever a case is loaded or labelled) leaves what the user typed alone."""
    if not choice:
        return gr.skip()
    return choice.split(": ", 1)[1] if ": " in choice[:6] else choice


# ----------------------------------------------------------------------------- the app


def build_demo(device: str = "cpu") -> gr.Blocks:
    DEVICE["name"] = device
    generators, tokenizers = _models("image-generator"), _models("image-tokenizer")
    clips, groundings = _models(CLIP_TASK), _models("grounding")
    with gr.Blocks(title="mmtok", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# mmtok\nMultimodal generation and grounding on shared tokenizers — runs offline on a CPU."
        )
        with gr.Tab("Generate"):
            if not generators:
                gr.Markdown("No generator is shipped yet: `mmtok train configs/xar-shapes64.yaml` makes one.")
            with gr.Row():
                with gr.Column():
                    g_model = gr.Dropdown(
                        generators, value=_default(generators, "xar-digits64"), label="model"
                    )
                    g_prompt = gr.Textbox(
                        label="prompt (text models)", value="a big red circle in the middle"
                    )
                    with gr.Accordion("words the text models know", open=False):
                        gr.Markdown(" ".join(vocabulary()), elem_id="gen-vocabulary")
                    g_class = gr.Number(label="class (class models)", value=7, precision=0)
                    with gr.Row():
                        g_n = gr.Slider(1, 16, value=4, step=1, label="images")
                        g_seed = gr.Number(label="seed", value=0, precision=0)
                    with gr.Row():
                        g_steps = gr.Slider(1, 100, value=20, step=1, label="steps per entity")
                        g_cfg = gr.Slider(0, 10, value=3.0, step=0.5, label="guidance")
                    g_run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                with gr.Column():
                    g_gallery = gr.Gallery(label="images", columns=4, format="png", elem_id="gen-gallery")
                    g_info = gr.Markdown(elem_id="gen-info")
            g_run.click(
                generate,
                [g_model, g_prompt, g_class, g_n, g_seed, g_steps, g_cfg],
                [g_gallery, g_info],
                concurrency_id=MODELS,
            )

        with gr.Tab("Tokenize"):
            with gr.Row():
                with gr.Column():
                    t_image = gr.Image(type="filepath", label="image", elem_id="tok-input")
                    t_model = gr.Dropdown(
                        tokenizers, value=tokenizers[0] if tokenizers else None, label="tokenizer"
                    )
                    t_run = gr.Button("Tokenize", variant="primary")
                with gr.Column():
                    with gr.Row():
                        t_orig = gr.Image(label="original", format="png")
                        t_rec = gr.Image(label="reconstruction", format="png")
                    t_info = gr.Markdown(elem_id="tok-info")
                    t_grid = gr.Image(label="code grid (binary tokenizers)", format="png")
            t_run.click(tokenize, [t_image, t_model], [t_orig, t_rec, t_info, t_grid], concurrency_id=MODELS)

        with gr.Tab("CLIP"):
            c_model = gr.Dropdown(clips, value=_default(clips, "lightclip-shapes64"), label="model")
            with gr.Row():
                with gr.Column():
                    c_image = gr.Image(type="filepath", label="image", elem_id="clip-input")
                    c_labels = gr.Textbox(
                        label="labels (one per line)", lines=4, elem_id="clip-labels", value=DEFAULT_LABELS
                    )
                    c_run = gr.Button("Classify", variant="primary", elem_id="clip-classify")
                with gr.Column():
                    c_plot = gr.BarPlot(x="label", y="probability", label="probabilities", y_lim=[0, 1])
                    c_best = gr.Markdown(elem_id="clip-best")
            with gr.Row():
                c_text = gr.Textbox(label="search the sample gallery", value="a large yellow heart", scale=3)
                c_top = gr.Slider(1, 12, value=6, step=1, label="top")
                c_search = gr.Button("Search", elem_id="clip-search")
            c_gallery = gr.Gallery(
                label="best matches (score)", columns=6, format="png", elem_id="clip-gallery"
            )
            c_run.click(clip_classify, [c_image, c_labels, c_model], [c_plot, c_best], concurrency_id=MODELS)
            c_search.click(clip_search, [c_text, c_model, c_top], [c_gallery], concurrency_id=MODELS)

        with gr.Tab("Compress"):
            with gr.Row():
                with gr.Column():
                    k_image = gr.Image(type="filepath", label="image", elem_id="cmp-input")
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
                    k_overlay = gr.Image(label="keep-map (dimmed: dropped or merged tokens)", format="png")
                    k_info = gr.Markdown(elem_id="cmp-info")
                    k_table = gr.Dataframe(headers=["rank", "before", "p", "after", "p"], label="top labels",
                                           elem_id="cmp-table")  # fmt: skip
            k_inputs = [k_image, k_model, k_method, k_keep, k_labels]
            k_run.click(compress, k_inputs, [k_overlay, k_info, k_table], concurrency_id=MODELS)

        with gr.Tab("PET/CT"):
            state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    p_seed = gr.Number(label="phantom seed", value=0, precision=0)
                    p_sample = gr.Button("Load a sample phantom", elem_id="pet-sample")
                    p_pet = gr.File(label="PET: SUV NIfTI or zipped DICOM series", type="filepath",
                                    elem_id="pet-upload")  # fmt: skip
                    p_ct = gr.File(label="CT: NIfTI or zipped DICOM series (optional)", type="filepath",
                                   elem_id="ct-upload")  # fmt: skip
                    p_load = gr.Button("Load uploads")
                    p_report = gr.Textbox(label="report", lines=8, elem_id="pet-report")
                    p_label = gr.Button("Weak-label the report", variant="primary", elem_id="pet-weaklabel")
                    p_status = gr.Markdown(elem_id="pet-status")
                with gr.Column(scale=2):
                    p_slice = gr.Slider(0, 1, value=0, step=1, label="axial slice")
                    with gr.Row():
                        p_axial = gr.Image(label="axial (CT + PET + mask)", format="png")
                        p_coronal = gr.Image(label="coronal MIP", format="png")
                    p_table = gr.Dataframe(
                        headers=["#", "status", "SUVmax", "slice", "side", "organ", "volume mL", "sentence"],
                        label="findings", elem_id="pet-findings", wrap=True,
                    )  # fmt: skip
                    p_finding = gr.Dropdown([], label="show one finding")
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
                    p_mask = gr.File(label="mask (NIfTI, PET grid)")
            outs = [state, p_report, p_slice, p_axial, p_coronal, p_status, p_pick]
            p_sample.click(load_sample, [p_seed], outs)
            p_load.click(load_upload, [p_pet, p_ct, p_report], outs)
            p_slice.release(render, [state, p_slice], [p_axial, p_coronal])
            p_label.click(_weaklabel_and_render, [state, p_report, p_slice],
                          [state, p_table, p_finding, p_mask, p_axial, p_coronal],
                          concurrency_id=MODELS, api_name="weaklabel")  # fmt: skip
            p_finding.change(show_finding, [state, p_finding], [state, p_slice, p_axial, p_coronal, p_mask])
            p_finding.change(_pick_sentence, [p_finding], [p_sentence], api_visibility="private")
            p_pick.change(_pick_sentence, [p_pick], [p_sentence], api_visibility="private")
            p_ground.click(
                ground_sentence,
                [state, p_sentence, p_gmodel, p_slice],
                [state, p_slice, p_axial, p_coronal, p_mask, p_ginfo],
                concurrency_id=MODELS,
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
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, share=False,
                       enable_monitoring=False, **kwargs)  # fmt: skip


if __name__ == "__main__":
    launch()
