"""Latent cache: encode a dataset once with an image tokenizer, train generators on the stored output.

A cache is one folder per (tokenizer, dataset) pair, under a root of your choice::

    <root>/<name>-<split>-<key16>/
        meta.json            format, key, kind, shapes, tokenizer + dataset identity, fields, file sizes
        latents.npy          float32 N x C x h x w   (continuous tokenizer)   -- or --
        codes.npy            int64   N x h x w [x m] (discrete tokenizer)
        field-<key>.npy      one per copied item field: int64 / float64 / unicode N, or N x ... tensors

Everything is plain ``.npy`` (read with ``allow_pickle=False``, memory-mapped) and JSON; no pickle.
``key`` is a sha256 over the tokenizer hash (class, config and every state-dict tensor's bytes), the
dataset identity (name, class, split, options, length, and a fingerprint of a few images) and the
copied field names, so a changed weight, option or renderer never reuses a stale cache.

Writes are atomic: a build fills ``<root>/.tmp-<folder>-<random>/`` and renames it into place when
complete. A killed build leaves only such a temp folder, which nothing reads (delete it when no build
is running). A final folder that fails its checks (missing ``meta.json``, a file of the wrong size, a
bad ``.npy`` header; with ``verify=True`` also a sha256 mismatch) makes :meth:`LatentCache.open` raise
a one-line ``CheckpointError``; :meth:`LatentCache.build` and :func:`cached_dataset` instead rebuild it
(with a warning), since a cache is derived data.

    from mmtok.data.latents import cached_dataset
    ds = cached_dataset(tokenizer, "shapes", "train", "runs/latents", resolution=32)
    ds[0]   # {"latent": float32 C x h x w, "caption": str, "shape": LongTensor[9], ...}

Under ``torchrun``, build on rank 0 first (then a barrier) so the ranks do not all encode.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import hub
from ..errors import CheckpointError, ConfigError
from ..runtime import autocast, pick_device, use_bf16
from .registry import build_dataset

FORMAT = 1
META = "meta.json"
DATA_FILES = {"latent": "latents.npy", "codes": "codes.npy"}
_FIELD_TYPES = {"int": np.int64, "float": np.float64}


# ---------------------------------------------------------------------------- identity


def tokenizer_hash(tokenizer: nn.Module) -> str:
    """sha256 over the tokenizer's class, ``config`` and state-dict tensors (sorted by name)."""
    h = hashlib.sha256()
    cls = type(tokenizer)
    config = getattr(tokenizer, "config", None)
    h.update(f"{cls.__module__}.{cls.__qualname__}\n".encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tokenizer.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        # Raw bytes through a uint8 view: works for bf16, which NumPy cannot represent.
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def dataset_identity(dataset: Dataset, name: str | None = None, options: dict | None = None) -> dict:
    """What makes a dataset's items what they are, as JSON-able values.

    Args:
        dataset: a map-style dataset of dicts with an ``"image"``.
        name: registry name (default: the class name).
        options: constructor options; merged over the dataset's public str/int/float/bool attributes,
            which for mmtok's datasets are exactly their options.
    """
    cls = type(dataset)
    attributes = {
        k: v
        for k, v in sorted(getattr(dataset, "__dict__", {}).items())
        if not k.startswith("_") and (v is None or isinstance(v, str | int | float | bool))
    }
    n = len(dataset)
    # A few images' bytes catch what options cannot: a changed renderer or data file.
    fingerprint = hashlib.sha256()
    for i in sorted({0, n // 2, n - 1}):
        image = dataset[i]["image"].detach().float().cpu().contiguous()
        fingerprint.update(image.numpy())
    return {
        "name": name or cls.__name__,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "split": getattr(dataset, "split", None),
        "options": json.loads(json.dumps({**attributes, **(options or {})}, sort_keys=True, default=str)),
        "length": n,
        "fingerprint": fingerprint.hexdigest(),
    }


def _cache_key(tok_hash: str, identity: dict, keys) -> str:
    text = json.dumps(
        {"format": FORMAT, "tokenizer": tok_hash, "dataset": identity, "keys": keys},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(text)).strip("_.") or "data"


# ---------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class LatentCache:
    """A complete, checked cache folder. Make one with :meth:`build` or :meth:`open`."""

    folder: Path
    meta: dict

    @property
    def kind(self) -> str:
        """``"latent"`` (float C x h x w per item) or ``"codes"`` (int h x w [x m] per item)."""
        return self.meta["kind"]

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def fields(self) -> dict[str, str]:
        """Copied item fields and their types (``int``, ``float``, ``str`` or ``tensor``)."""
        return dict(self.meta["fields"])

    @property
    def tokenizer_hash(self) -> str:
        return self.meta["tokenizer"]["hash"]

    def __len__(self) -> int:
        return self.meta["count"]

    def dataset(self) -> CachedLatentDataset:
        return CachedLatentDataset(self)

    @classmethod
    def open(cls, path: str | os.PathLike, *, verify: bool = False) -> LatentCache:
        """Open a cache folder, or the only cache under a root folder.

        Args:
            path: a cache folder (holds ``meta.json``) or a root holding exactly one cache.
            verify: also check every file's sha256 (reads all the data once).

        Raises:
            CheckpointError: no cache there, several, or one that is incomplete or corrupt.
        """
        folder = Path(path)
        if not (folder / META).is_file():
            folder = _only_cache(folder)
        meta = _read_meta(folder)
        for name, info in meta["files"].items():
            file = folder / name
            size = file.stat().st_size if file.is_file() else None
            if size != info["bytes"]:
                found = "missing" if size is None else f"{size} bytes"
                raise CheckpointError(
                    f"latent cache {folder} is incomplete or corrupt: {name} is {found}, expected "
                    f"{info['bytes']} bytes; delete the folder or call LatentCache.build to rebuild it"
                )
            if verify and _sha256(file) != info["sha256"]:
                raise CheckpointError(f"latent cache {folder} is corrupt: {name} fails its sha256 check")
        cache = cls(folder, meta)
        data = _load_array(folder, DATA_FILES[cache.kind])
        expected = (len(cache), *cache.item_shape)
        if data.shape != expected or data.dtype != np.dtype(meta["dtype"]):
            raise CheckpointError(
                f"latent cache {folder} is corrupt: {DATA_FILES[cache.kind]} holds {data.dtype} "
                f"{data.shape}, expected {meta['dtype']} {expected}"
            )
        return cache

    @classmethod
    def build(
        cls,
        tokenizer: nn.Module,
        dataset: Dataset,
        root: str | os.PathLike,
        *,
        batch_size: int = 64,
        device: torch.device | str | None = None,
        keys: tuple[str, ...] | None = None,
        name: str | None = None,
        options: dict | None = None,
        num_workers: int = 0,
        progress: bool = True,
        bf16: bool = False,
    ) -> LatentCache:
        """Encode ``dataset`` with ``tokenizer`` into a cache under ``root``, or open the existing one.

        Args:
            tokenizer: ``nn.Module`` with ``encode(images B x 3 x H x W in [-1, 1])`` returning float
                latents B x C x h x w or integer codes B x h x w [x m]; ``config`` and ``state_dict()``
                identify it.
            dataset: map-style dataset of dicts with an ``"image"``.
            root: folder that holds caches (created if missing).
            batch_size: images per ``encode`` call.
            device: where to encode (default: the tokenizer's device); the tokenizer is not moved.
            keys: item fields to copy (default: every str/int/float/tensor field but ``image``).
            name, options: dataset identity, see :func:`dataset_identity`.
            num_workers: DataLoader workers reading the dataset.
            progress: show a tqdm bar on stderr.
            bf16: encode under bf16 autocast (about 3.5x faster on CPUs with native bf16; latents
                differ from fp32 ones by bf16 rounding, so it is part of the cache key).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if len(dataset) == 0:
            raise ConfigError("cannot cache an empty dataset")
        identity = dataset_identity(dataset, name, options)
        tok_hash = tokenizer_hash(tokenizer)
        key = _cache_key(tok_hash, identity, None if keys is None else sorted(keys))
        if bf16:  # fp32 caches keep the keys they always had
            key = hashlib.sha256(f"{key}:bf16".encode()).hexdigest()
        root = Path(root)
        folder = root / f"{_slug(identity['name'])}-{_slug(identity['split'])}-{key[:16]}"
        if folder.exists():
            try:
                cache = cls.open(folder)
                if cache.meta["key"] == key:
                    return cache  # hit: nothing to encode
                warnings.warn(f"latent cache {folder} has another key; rebuilding", stacklevel=2)
            except CheckpointError as err:
                warnings.warn(f"{err}; rebuilding", stacklevel=2)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=root))
        try:
            meta = _encode_into(
                tmp, tokenizer, dataset, batch_size, device, keys, num_workers, progress, bf16
            )
            tok_class = f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"
            config = json.loads(json.dumps(getattr(tokenizer, "config", None), sort_keys=True, default=str))
            meta.update(
                key=key, dataset=identity, tokenizer={"class": tok_class, "hash": tok_hash, "config": config}
            )
            _write_json(tmp / META, meta)
            _install(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(folder)


class CachedLatentDataset(Dataset):
    """Items of a :class:`LatentCache`: ``{"latent" | "codes": tensor, **copied fields}``.

    ``latent`` is float32 C x h x w; ``codes`` is a LongTensor h x w (or h x w x m). Copied fields come
    back as they were (bools as ints). Arrays are memory-mapped, opened lazily in each process, so
    DataLoader workers share the page cache instead of copying the data.
    """

    def __init__(self, cache: LatentCache | str | os.PathLike):
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache.open(cache)
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.cache)

    def __getstate__(self):
        # Spawned workers reopen the memory maps rather than receive a copy of the whole array.
        return {**self.__dict__, "_arrays": None}

    def _open(self) -> dict[str, np.ndarray]:
        folder, kind = self.cache.folder, self.cache.kind
        arrays = {kind: _load_array(folder, DATA_FILES[kind])}
        arrays.update({k: _load_array(folder, f"field-{k}.npy") for k in self.cache.fields})
        self._arrays = arrays
        return arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        arrays = self._arrays or self._open()
        kind = self.cache.kind
        item: dict[str, Any] = {kind: torch.from_numpy(np.array(arrays[kind][index]))}
        for key, type_ in self.cache.fields.items():
            value = arrays[key][index]
            if type_ == "tensor":
                item[key] = torch.from_numpy(np.array(value))
            else:
                item[key] = {"int": int, "float": float, "str": str}[type_](value)
        return item


def cached_dataset(
    tokenizer: nn.Module,
    dataset_name: str,
    split: str,
    root: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    keys: tuple[str, ...] | None = None,
    num_workers: int = 0,
    progress: bool = True,
    bf16: bool = False,
    **dataset_kwargs,
) -> CachedLatentDataset:
    """Build (or reopen) the cache of registry dataset ``dataset_name`` and return its items.

    ``dataset_kwargs`` go to :func:`mmtok.data.build_dataset`; the other arguments are those of
    :meth:`LatentCache.build`.
    """
    dataset = build_dataset(dataset_name, split, **dataset_kwargs)
    cache = LatentCache.build(
        tokenizer, dataset, root, batch_size=batch_size, device=device, keys=keys, name=dataset_name,
        options=dataset_kwargs, num_workers=num_workers, progress=progress, bf16=bf16,
    )  # fmt: skip
    return CachedLatentDataset(cache)


# ---------------------------------------------------------------------------- writing


def _collate(items: list[dict], keys: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, list]]:
    return torch.stack([it["image"] for it in items]), {k: [it[k] for it in items] for k in keys}


def _field_type(value) -> str | None:
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, str):
        return "str"
    if isinstance(value, int):  # bool included: stored as an int
        return "int"
    return "float" if isinstance(value, float) else None


def _select_fields(first: dict, keys) -> dict[str, str]:
    """The fields to copy and their types, judged on the first item."""
    reserved = {"image", *DATA_FILES}
    if keys is None:
        found = {k: _field_type(v) for k, v in first.items() if k not in reserved and k.isidentifier()}
        return {k: t for k, t in found.items() if t is not None}
    fields = {}
    for k in keys:
        if k not in first or k in reserved:
            allowed = ", ".join(k for k in first if k not in reserved)
            raise ConfigError(f"cannot copy field {k!r}: dataset items have {allowed}")
        if not k.isidentifier() or _field_type(first[k]) is None:
            raise ConfigError(f"cannot copy field {k!r}: only str, int, float and tensor fields are stored")
        fields[k] = _field_type(first[k])
    return fields


def _encode_into(
    folder: Path, tokenizer, dataset, batch_size, device, keys, num_workers, progress, bf16
) -> dict:
    fields = _select_fields(dataset[0], keys)
    if device is None:
        device = next((t.device for t in tokenizer.state_dict().values()), torch.device("cpu"))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=functools.partial(_collate, keys=tuple(fields)),
    )  # fmt: skip
    n = len(dataset)
    data, kind, start = None, None, 0
    values: dict[str, list] = {k: [] for k in fields}
    was_training = tokenizer.training
    tokenizer.eval()
    bar = tqdm(total=n, desc=f"encoding {type(dataset).__name__}", unit="img", disable=not progress)
    try:
        with torch.inference_mode():
            for images, batch_fields in loader:
                with autocast(device, enabled=bf16):
                    out = tokenizer.encode(images.to(device))
                batch_kind, out = _check_output(out, len(images))
                if data is None:  # shapes are known only once the tokenizer has run
                    kind = batch_kind
                    path = folder / DATA_FILES[kind]
                    dtype = np.float32 if kind == "latent" else np.int64
                    data = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, *out.shape[1:]))
                if batch_kind != kind or out.shape[1:] != data.shape[1:]:
                    raise ConfigError(
                        f"tokenizer output changed from {kind} {data.shape[1:]} to {batch_kind} "
                        f"{tuple(out.shape[1:])} within one dataset"
                    )
                data[start : start + len(out)] = out.cpu().numpy()
                start += len(out)
                for k in fields:
                    values[k].extend(batch_fields[k])
                bar.update(len(out))
    finally:
        bar.close()
        tokenizer.train(was_training)
    data.flush()
    shape = list(data.shape[1:])
    del data  # close the memory map before the file is hashed and renamed
    for k, type_ in fields.items():
        np.save(folder / f"field-{k}.npy", _field_array(k, type_, values[k]), allow_pickle=False)
    files = {}
    for p in sorted(folder.glob("*.npy")):
        _fsync(p)  # the rename must not land before the bytes do
        files[p.name] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    dtype = "float32" if kind == "latent" else "int64"
    return {"format": FORMAT, "kind": kind, "count": n, "shape": shape, "dtype": dtype, "fields": fields,
            "files": files}  # fmt: skip


def _check_output(out, batch: int) -> tuple[str, torch.Tensor]:
    if isinstance(out, torch.Tensor) and len(out) == batch:
        if out.is_floating_point() and out.dim() == 4:
            return "latent", out.float()
        if not (out.is_floating_point() or out.is_complex()) and out.dim() in (3, 4):
            return "codes", out.long()
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    raise ConfigError(
        f"tokenizer.encode returned {shape} for {batch} images; expected float B x C x h x w latents "
        "or integer B x h x w [x m] codes"
    )


def _field_array(key: str, type_: str, values: list) -> np.ndarray:
    try:
        if type_ == "tensor":
            return torch.stack([v.detach().cpu() for v in values]).numpy()
        if type_ == "str":
            if not all(isinstance(v, str) for v in values):
                raise TypeError("mixed types")
            return np.array(values, dtype=str)
        return np.array(values, dtype=_FIELD_TYPES[type_])
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:
        message = f"field {key!r} differs in type or shape between items ({err}); leave it out of keys="
        raise ConfigError(message) from err


def _install(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` to ``folder``, moving aside whatever stale folder is there."""
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{folder.name}-", dir=folder.parent))
        os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    _fsync(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- reading


def _only_cache(root: Path) -> Path:
    # Dot-folders are builds in progress (or killed ones): never read them.
    found = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")] if root.is_dir() else []
    found = [p for p in found if (p / META).is_file()]
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        what = f"{len(found)} latent caches ({names})" if found else "no latent cache"
        raise CheckpointError(f"{what} at {root}: pass one cache folder, or build one with LatentCache.build")
    return found[0]


def _read_meta(folder: Path) -> dict:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"latent cache {folder} has no readable {META} ({err}); rebuild it") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") not in DATA_FILES:
        raise CheckpointError(f"latent cache {folder} has an unknown format; rebuild it with this version")
    return meta


def _load_array(folder: Path, name: str) -> np.ndarray:
    try:
        return np.load(folder / name, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"latent cache {folder} is corrupt: cannot read {name} ({err})") from err


__all__ = ["CachedLatentDataset", "LatentCache", "cached_dataset", "dataset_identity", "tokenizer_hash"]


class LatentsDataset(CachedLatentDataset):
    """Registry entry ``latents``: a test bed encoded by a named tokenizer, cached on first use.

    This is what generator configs train on::

        data: {name: latents, split: train, kwargs: {tokenizer: kl-f8-64, source: shapes,
               options: {resolution: 64, max_objects: 2}}}

    Args:
        split: the source dataset's split.
        tokenizer: model name (or folder) of the image tokenizer.
        source: registry name of the image dataset.
        options: keyword arguments of that dataset.
        root: cache folder; the cache is keyed by tokenizer hash and dataset identity, so changing
            either builds a new one next to the old.
        batch_size: encoding batch size.
        device: encoding device (default: the best available).
        bf16: encode under bf16 autocast (default ``None``: where it is faster, see
            ``mmtok.runtime.bf16_is_fast``; ~3.5x on CPUs with native bf16).
    """

    def __init__(
        self,
        split: str = "train",
        tokenizer: str = "kl-f8-64",
        source: str = "shapes",
        options: dict | None = None,
        root: str = "runs/latents",
        batch_size: int = 64,
        device: str | None = None,
        bf16: bool | None = None,
    ):
        device = pick_device(device)
        bf16 = use_bf16(device, bf16)
        model = hub.load(tokenizer, device=device)
        options = options or {}
        cache = cached_dataset(
            model, source, split, root, batch_size=batch_size, device=device, bf16=bf16, **options
        )
        super().__init__(cache.cache)
        self.tokenizer = tokenizer
