"""Named checkpoints: registry of model classes, resolution of names, save and load.

A saved model is a folder (huggingface_hub's ``PyTorchModelHubMixin`` format)::

    <name>/config.json          constructor keyword arguments + "_class_name", "_mmtok_version", "_task"
    <name>/model.safetensors    weights (loaded with strict=True)
    <name>/metrics.json         measured metrics (optional, shown by `mmtok models`)
    <name>/README.md            how it was trained (exact command) and its metrics

``load(name)`` resolves, in order: ``weights/<name>`` under ``$MMTOK_WEIGHTS`` (os.pathsep-separated)
or the project's ``weights/`` folder, then a local folder (``local-dir:`` prefix optional), then a
Hugging Face id -- only when ``HF_HUB_OFFLINE`` is not set. Nothing is downloaded at import.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .errors import CheckpointError, MmtokError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"

# Modules that define registered model classes; imported on first lookup so `import mmtok` stays light.
_MODEL_MODULES = (
    "mmtok.eval.judge",
    "mmtok.tokenizers.image_kl",
    "mmtok.tokenizers.image_binary",
    "mmtok.generation.xar",
    "mmtok.generation.dit",
    "mmtok.generation.ecar",
    "mmtok.generation.elm",
    "mmtok.generation.parser",
    "mmtok.clip.model",
    "mmtok.grounding.model",
    "mmtok.compression.explain",
)
_REGISTRY: dict[str, type[MmtokModel]] = {}


class MmtokModel(nn.Module, PyTorchModelHubMixin, library_name="mmtok", tags=["mmtok"]):
    """Base class of every mmtok model: ``nn.Module`` whose constructor kwargs become ``config.json``.

    Subclasses set ``task`` (shown by ``mmtok models``) and may implement
    ``training_step(batch) -> (loss, logs)`` to be trainable by ``mmtok train``.
    """

    task: ClassVar[str] = "model"

    @property
    def config(self) -> dict[str, Any]:
        return dict(getattr(self, "_hub_mixin_config", None) or {})

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def register_model(cls: type[MmtokModel]) -> type[MmtokModel]:
    """Class decorator: make ``cls`` loadable by its name from a saved ``config.json``."""
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise RuntimeError(f"model class {name} registered twice")
    _REGISTRY[name] = cls
    return cls


def model_class(name: str) -> type[MmtokModel]:
    if name not in _REGISTRY:
        for module in _MODEL_MODULES:
            importlib.import_module(module)
    if name not in _REGISTRY:
        raise CheckpointError(f"unknown model class {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_classes() -> dict[str, type[MmtokModel]]:
    for module in _MODEL_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


# ----------------------------------------------------------------------------- resolution


def weights_dirs() -> list[Path]:
    """Folders that hold named checkpoints, in lookup order."""
    env = os.environ.get("MMTOK_WEIGHTS")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path(__file__).resolve().parent.parent / "weights", Path.cwd() / "weights"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve(name: str | os.PathLike) -> Path:
    """Name -> local folder holding ``config.json``."""
    text = str(name)
    if text.startswith("local-dir:"):
        text = text[len("local-dir:") :]
    elif "/" not in text and os.sep not in text:
        for root in weights_dirs():
            if (root / text / CONFIG_NAME).is_file():
                return root / text
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path} has no {CONFIG_NAME}: not an mmtok model folder")
        return path
    if text.count("/") == 1 and not path.exists() and not text.startswith((".", "/", "~")):
        if _offline():
            raise MmtokError(f"model {text!r} is not local and HF_HUB_OFFLINE is set: download it first")
        from huggingface_hub import snapshot_download  # only here, only when online

        try:
            return Path(snapshot_download(text))  # reached only when HF_HUB_OFFLINE is unset
        except Exception as e:  # network or hub error -> one line
            raise MmtokError(f"could not fetch {text!r} from the Hugging Face Hub: {e}") from e
    known = ", ".join(m["name"] for m in list_models()) or "none"
    raise MmtokError(f"unknown model {text!r}: not under weights/ nor a folder (known: {known})")


def read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e
    if not isinstance(config, dict) or "_class_name" not in config:
        raise CheckpointError(f"{file} has no _class_name: not saved by mmtok")
    return config


# ----------------------------------------------------------------------------- save / load


def save(
    model: MmtokModel,
    folder: str | os.PathLike,
    *,
    readme: str | None = None,
    metrics: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` to ``folder`` atomically (temp folder + rename). ``dtype`` casts floating
    weights on disk (bf16 keeps shipped checkpoints small); loading casts back to fp32."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is ordinary, readable data
    try:
        if dtype is not None:
            # Save a cast copy so the caller's model keeps its precision.
            import copy

            model = copy.deepcopy(model).to(dtype)
        model.save_pretrained(tmp)
        config = json.loads((tmp / CONFIG_NAME).read_text())
        from . import __version__

        config.update(_class_name=type(model).__name__, _mmtok_version=__version__, _task=model.task)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if metrics is not None:
            (tmp / METRICS_NAME).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if readme is not None:
            (tmp / "README.md").write_text(readme)
        for file in tmp.iterdir():  # safetensors writes through a private temp file: make it readable
            file.chmod(0o644)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load(name: str | os.PathLike, device: str | torch.device | None = None) -> MmtokModel:
    """Load a named or local checkpoint in eval mode, fp32, on ``device`` (default cpu)."""
    folder = resolve(name)
    config = read_config(folder)
    cls = model_class(config["_class_name"])
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        model = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME} does not match {cls.__name__}: {e}") from e
    try:
        # Same file format as PyTorchModelHubMixin.from_pretrained, without its stdout chatter
        # (which would corrupt `--json` output). strict: every key present, none extra, shapes equal.
        safetensors.torch.load_model(model, str(weights), strict=True, device="cpu")
    except Exception as e:  # corrupt file, missing/unexpected keys, shape mismatch
        raise CheckpointError(f"{weights} cannot be loaded into {cls.__name__}: {e}") from e
    model = model.float().eval()
    return model.to(device) if device is not None else model


def list_models() -> list[dict[str, Any]]:
    """Every named checkpoint found in ``weights_dirs()``: name, class, task, params, size, source."""
    seen: dict[str, dict[str, Any]] = {}
    for root in weights_dirs():
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / CONFIG_NAME).is_file()):
            if folder.name in seen or folder.name.startswith("."):
                continue
            try:
                config = read_config(folder)
            except CheckpointError:
                continue
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            metrics = {}
            if (folder / METRICS_NAME).is_file():
                try:
                    metrics = json.loads((folder / METRICS_NAME).read_text())
                except ValueError:
                    metrics = {}
            seen[folder.name] = {
                "name": folder.name,
                "class": config["_class_name"],
                "task": config.get("_task", "model"),
                "size_mb": round(size / 2**20, 2),
                "source": str(folder),
                "metrics": metrics,
            }
    return list(seen.values())


def record_metrics(name: str | os.PathLike, metrics: dict[str, Any], command: str, title: str) -> Path:
    """Merge measured ``metrics`` into a model folder's ``metrics.json`` and (re)write a README section
    ``## <title>`` holding the command that measured them, so the card always shows the latest figures."""
    folder = resolve(name)
    file = folder / METRICS_NAME
    merged = json.loads(file.read_text()) if file.is_file() else {}
    merged.update(metrics)
    _write_atomic(file, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    readme = folder / "README.md"
    text = readme.read_text() if readme.is_file() else f"# {folder.name}\n"
    rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()
    )
    section = (
        f"## {title}\n\nMeasured by:\n\n```bash\n{command}\n```\n\n| metric | value |\n|---|---|\n{rows}\n"
    )
    start = text.find(f"## {title}\n")
    if start >= 0:  # replace the old section up to the next heading of the same level
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    _write_atomic(readme, text)
    return folder


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
