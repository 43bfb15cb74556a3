"""The dataset registry: name -> ``Dataset`` class, and :func:`build_dataset`.

``mmtok.data`` fills it with the test beds; datasets built from other datasets (``latents``,
``mixture``) call :func:`build_dataset` from here. A dataset of a package above data/ (data/ is a
bottom layer and imports none of them) is entered as ``"module:Class"`` and imported on its first
lookup, as ``hub`` does with the model modules; names, ``in`` and iteration import nothing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator, MutableMapping

from torch.utils.data import Dataset

from ..errors import ConfigError


class DatasetRegistry(MutableMapping):
    """Dataset name -> class; an entry may be a ``"module:Class"`` string, imported on first lookup."""

    def __init__(self, entries: dict[str, type[Dataset] | str] | None = None):
        self._entries = dict(entries or {})

    def __getitem__(self, name: str) -> type[Dataset]:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def __setitem__(self, name: str, cls: type[Dataset] | str) -> None:
        self._entries[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


DATASETS = DatasetRegistry()


def build_dataset(name: str, split: str = "train", **kwargs) -> Dataset:
    """Build the dataset registered as ``name`` for ``split``; unknown names or options raise ConfigError."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    cls = DATASETS[name]
    options = [p for p in inspect.signature(cls).parameters if p != "split"]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        bad = ", ".join(map(repr, unknown))
        raise ConfigError(f"dataset {name!r} has no option {bad}: valid options are {', '.join(options)}")
    return cls(split=split, **kwargs)
