"""PET/CT commands for the ``mmtok`` CLI: ``phantom``, ``weaklabel``, ``suv``, ``ground``, ``eval weaklabel``
and ``eval grounding``.

``add_commands(sub)`` adds the subcommands to ``mmtok``'s subparsers; each handler returns an exit
code and raises ``MmtokError`` on bad input (the main CLI prints it as one line and exits 2).
``eval_weaklabel(args)`` returns the flat metrics dict for ``mmtok eval weaklabel`` (it reads
``args.n``, ``args.seed``, ``args.json`` and, if present, ``args.shape``/``args.method``).
``eval_grounding(args)`` returns ``{model name: metrics}`` for ``mmtok eval grounding`` (it reads
``args.model`` (a list or None: the three shipped grounding models), ``args.n``, ``args.seed``,
``args.json`` and, if present, ``args.device``/``args.overlap``/``args.shape``).

This module is imported on every ``mmtok`` start, so the PET/CT modules (nibabel, pydicom, SciPy; MONAI
for the nets) are imported inside the handlers that use them.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import hub
from ..errors import InputError
from ..runtime import pick_device


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")


def _shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 96x96x160, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"shape must be three sizes >= 16 like 96x96x160, got {text!r}")
    return parts  # type: ignore[return-value]


def cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import write_phantoms

    spacing = (args.spacing,) * 3
    dirs = write_phantoms(args.out, args.n, seed=args.seed, shape=args.shape, spacing=spacing)
    if args.json:
        cases = [
            {"dir": str(d), "lesions": len(json.loads((d / "truth.json").read_text())["lesions"])}
            for d in dirs
        ]
        _print_json({"cases": cases})
    else:
        print(f"wrote {len(dirs)} case(s) to {args.out} (SUV, CTres, SEG .nii.gz, report.txt, truth.json)")
    return 0


def _config(args: argparse.Namespace):
    from .weaklabel import WeakLabelConfig

    return WeakLabelConfig(
        slice_origin=args.slice_origin,
        slice_base=args.slice_base,
        suv_tol=args.suv_tol,
        slice_tol=args.slice_tol,
        method=args.method,
        fraction=args.fraction,
    )


def cmd_weaklabel(args: argparse.Namespace) -> int:
    from .weaklabel import run_weaklabel

    summary = run_weaklabel(args.report, args.pet, args.out, ct=args.ct, config=_config(args))
    if args.json:
        _print_json(summary)
        return 0
    for n, f in enumerate(summary["findings"], 1):
        head = f"{n:2d}. {f['status']:<9} SUVmax {f['suvmax']} slice {f['slice']}"
        if f["status"] == "located":
            print(
                f"{head}  peak {f['peak_voxel']}  {f['volume_ml']} mL  conf {f['confidence']}  -> {f['mask']}"
            )
        else:
            print(f"{head}  ({f['reason']})")
        print(f"    {f['sentence']}")
    return 0


def cmd_suv(args: argparse.Namespace) -> int:
    from .io import dicom_pet_to_suv, save_volume

    img, info = dicom_pet_to_suv(args.dicom)
    path = save_volume(img.get_fdata(dtype="float32"), img, args.out, "float32")
    result = {"out": str(path), "shape": list(img.shape), **vars(info)}
    if args.json:
        _print_json(result)
    else:
        print(f"SUVbw -> {path} ({'x'.join(map(str, img.shape))}); decay reference {info.time_reference}, "
              f"dt {info.delta_t_s:.0f} s, factor {info.decay_factor:.4f}")  # fmt: skip
        for note in info.notes:
            print(f"note: {note}")
    return 0


def cmd_ground(args: argparse.Namespace) -> int:
    from .pipeline import run_ground

    device = str(pick_device(args.device))
    info = run_ground(args.pet, args.ct, args.text, args.out, model=args.model, device=device,
                      overlay=args.overlay, overlap=args.overlap)  # fmt: skip
    if args.json:
        _print_json(info)
        return 0
    if info["voxels"]:
        print(f"{info['voxels']} voxels ({info['volume_ml']} mL), peak SUV {info['peak_suv']} at "
              f"{info['peak_voxel']}, confidence {info['confidence']:.2f} -> {info['out']} "
              f"({info['seconds']} s)")  # fmt: skip
    else:
        print(f"no lesion found for this sentence; empty mask -> {info['out']}")
    for note in info["notes"]:
        print(f"note: {note}")
    if not info["known_place"]:  # the mask is the model's guess, not a lesion the sentence picked out
        named = info["place"] or "no organ or lymph-node station"
        print(f"warning: the sentence names {named}; the model knows only {', '.join(info['known_places'])}",
              file=sys.stderr)  # fmt: skip
    return 0


def add_commands(sub) -> None:
    """Add ``phantom``, ``weaklabel``, ``suv`` and ``ground`` to an argparse subparsers object."""
    p = sub.add_parser("phantom", help="write synthetic whole-body PET/CT cases with lesions and reports")
    p.add_argument("--out", required=True, help="output folder (case_0000, case_0001, ...)")
    p.add_argument("-n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=_shape, default=(96, 96, 160), help="grid size, e.g. 96x96x160 (default)")
    p.add_argument("--spacing", type=float, default=4.0, help="isotropic voxel size in mm (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_phantom)

    p = sub.add_parser("weaklabel", help="lesion masks from report sentences (SUVmax + slice) on a PET")
    p.add_argument("--report", required=True, help="report text file (UTF-8)")
    p.add_argument(
        "--pet", required=True, help="SUV NIfTI, or a DICOM PET series folder (converted to SUVbw)"
    )
    p.add_argument("--ct", default=None, help="CT on the PET grid (CTres NIfTI), used for the body midline")
    p.add_argument("--out", required=True, help="folder for finding_NN.nii.gz masks and findings.json")
    p.add_argument(
        "--slice-origin",
        choices=["head", "foot"],
        default="head",
        help="report slice numbers count axial images from the head (default) or the feet",
    )
    p.add_argument("--slice-base", type=int, choices=[1, 0], default=1, help="first slice number (default 1)")
    p.add_argument(
        "--method",
        choices=["itm", "fixed"],
        default="itm",
        help="segmentation: iterative thresholding with local background (default) or a fixed fraction",
    )
    p.add_argument("--fraction", type=float, default=0.5, help="fixed method: threshold = fraction x SUVmax")
    p.add_argument(
        "--suv-tol", type=float, default=0.1, help="|stated - measured SUVmax| allowed (default 0.1)"
    )
    p.add_argument("--slice-tol", type=int, default=0, help="slices the lesion may miss the stated one by")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_weaklabel)

    p = sub.add_parser("suv", help="convert a DICOM PET series to an SUVbw NIfTI (QIBA procedure)")
    p.add_argument("dicom", help="folder holding one PET series")
    p.add_argument("--out", required=True, help="output NIfTI, e.g. SUV.nii.gz")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_suv)

    p = sub.add_parser("ground", help="segment the lesion one report sentence describes (ConTEXTual Net 3D)")
    p.add_argument(
        "--pet", required=True, help="SUV NIfTI, or a DICOM PET series folder (converted to SUVbw)"
    )
    p.add_argument("--ct", required=True, help="CT NIfTI (resampled onto the PET grid if it is not on it)")
    p.add_argument(
        "--text", required=True, help='the sentence, e.g. "Left axillary node, SUVmax 7.2 (image 98)."'
    )
    p.add_argument(
        "--model", default="contextual3d-phantom", help="grounding model (default contextual3d-phantom)"
    )
    p.add_argument("--out", required=True, help="output mask NIfTI (uint8, on the PET grid)")
    p.add_argument("--overlay", default=None, help="also write a coronal MIP PNG with the mask outlined")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(handler=cmd_ground)


def eval_weaklabel(args: argparse.Namespace) -> dict:
    """Metrics of ``mmtok eval weaklabel`` (``--n`` cases, default 200; ``--seed``)."""
    from .evaluate import evaluate_weaklabel
    from .weaklabel import WeakLabelConfig

    n = args.n if getattr(args, "n", None) is not None else 200
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    shape = getattr(args, "shape", None) or (96, 96, 160)
    config = WeakLabelConfig(method=getattr(args, "method", None) or "itm")
    return evaluate_weaklabel(n, seed=args.seed, shape=shape, config=config, progress=not args.json)


GROUNDING_MODELS = ("contextual3d-phantom", "dynunet3d-phantom", "contextual25d-phantom")


def eval_grounding(args: argparse.Namespace) -> dict:
    """Metrics of ``mmtok eval grounding`` per model: ``{name: metrics}`` (``--n`` cases, default 100)."""
    from .grounding_eval import evaluate_grounding

    n = args.n if getattr(args, "n", None) is not None else 100
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    names = getattr(args, "model", None) or list(GROUNDING_MODELS)
    if isinstance(names, str):
        names = [names]
    device = str(pick_device(getattr(args, "device", None) or "cpu"))
    overlap = getattr(args, "overlap", None)
    shape = getattr(args, "shape", None) or (96, 96, 160)
    results = {
        name: evaluate_grounding(name, n=n, seed=args.seed or 0, device=device,
                                 overlap=0.5 if overlap is None else overlap, shape=shape,
                                 progress=not args.json)
        for name in names
    }  # fmt: skip
    if getattr(args, "write", False):  # the figures into each model's card, with the command
        for name, metrics in results.items():
            flat = {k: v for k, v in metrics.items() if type(v) in (int, float)}
            bands = metrics.get("f1_suv_match_by_band", {})
            flat |= {f"f1_suv_match {band}": v for band, v in bands.items()}
            command = f"mmtok eval grounding --model {name} --n {n} --seed {args.seed or 0} --json"
            hub.record_metrics(name, flat, command, title="Grounding evaluation")
    return results
