"""Training configs: YAML -> typed dataclasses, validated before any work starts.

YAML is read with ``yaml.safe_load`` only (no tags, no code). Every field declares how it is parsed;
an unknown key or a bad value raises ``ConfigError`` with one line naming the key path, e.g.
``optim.lr: expected a positive number, got 'fast'``. A config may inherit another (``base:``) and
``mmtok train --set key=value`` overrides single keys; both are resolved before validation, so the
run folder's ``config.yaml`` is the config as trained. The schema is documented in docs/training.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data import DATASETS
from ..errors import ConfigError
from ..hub import registered_classes

MIXED_PRECISION = ("bf16", "no")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
EXPORT_DTYPES = ("bf16", "fp16", "fp32")
STRATEGIES = ("ddp", "fsdp")


class _Bad(Exception):
    """A value failed its parser; the builder adds the key path and the expectation."""


# ----------------------------------------------------------------------------- value parsers


def _number(value: Any) -> float:
    # PyYAML reads `1e-3` (no dot) as a string: accept any string that is a plain number.
    if isinstance(value, bool):
        raise _Bad
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise _Bad from None
    if not math.isfinite(x):
        raise _Bad
    return x


def _integer(value: Any) -> int:
    x = _number(value)
    if not x.is_integer():
        raise _Bad
    return int(x)


def _spec(expect: str, parse: Callable[[Any], Any], default: Any = dataclasses.MISSING, **kw) -> Any:
    """A dataclass field that knows how to parse its YAML value and what it expects."""
    meta = {"expect": expect, "parse": parse, **kw}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def _section(cls: type, optional: bool = False) -> Any:
    """A nested mapping; left out, it takes ``cls``'s defaults (or None when ``optional``)."""
    meta = {"expect": "a mapping", "section": cls}
    if optional:
        return field(default=None, metadata=meta)
    required = any(f.default is dataclasses.MISSING for f in dataclasses.fields(cls))
    return field(metadata=meta) if required else field(default_factory=cls, metadata=meta)


def _where(parse: Callable[[Any], Any], ok: Callable[[Any], bool]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        x = parse(value)
        if not ok(x):
            raise _Bad
        return x

    return check


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Bad
        return value

    return parse


def _precision(value: Any) -> str:
    # YAML 1.1 reads a bare `no` as false: take it as the "no" it was meant to be.
    return _choice(*MIXED_PRECISION)("no" if value is False else value)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad
    return value


def _mapping(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _Bad
    return dict(value)


def _betas(value: Any) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _Bad
    b = tuple(_number(v) for v in value)
    if not all(0 <= x < 1 for x in b):
        raise _Bad
    return b  # type: ignore[return-value]


POSITIVE = ("a positive number", _where(_number, lambda x: x > 0))
NON_NEGATIVE = ("a number >= 0", _where(_number, lambda x: x >= 0))
UNIT = ("a number in [0, 1)", _where(_number, lambda x: 0 <= x < 1))
FRACTION = ("a number in [0, 1]", _where(_number, lambda x: 0 <= x <= 1))
POSITIVE_INT = ("a positive integer", _where(_integer, lambda x: x > 0))
COUNT = ("an integer >= 0", _where(_integer, lambda x: x >= 0))
# A folder name under weights/ and runs/: no separators, no leading dot (no "..", no hidden folders).
NAME = ("a name of letters, digits, '.', '_' or '-'", _where(_string, re.compile(r"\w[\w.-]*").fullmatch))
STRING = ("a non-empty string", _string)
OPTIONAL_STRING = ("a non-empty string or null", lambda v: None if v is None else _string(v))
BOOL = ("true or false", _boolean)
MAPPING = ("a mapping of names to values", _mapping)


def _one_of(options: tuple[str, ...]) -> tuple[str, Callable[[Any], str]]:
    return (f"one of {', '.join(options)}", _choice(*options))


# ----------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    cls: str = _spec(*STRING, key="class")  # a registered MmtokModel with training_step()
    kwargs: dict[str, Any] = _spec(*MAPPING, default={})  # constructor arguments -> config.json
    # Start from these weights (a model name under weights/ or a folder; same class and kwargs):
    # fine-tuning and multi-stage recipes. Resuming a run uses --resume instead (exact state).
    init: str | None = _spec(*OPTIONAL_STRING, default=None)
    # false: parameters the init weights lack (new modules that start as the identity, e.g. a text gate
    # on another decoder level) keep their fresh values; unexpected or mis-shaped tensors still fail.
    init_strict: bool = _spec(*BOOL, default=True)
    # Then load these safetensors files (paths from the working directory) into these submodules, e.g.
    # {text: runs/x/text_encoder.safetensors}
    # (a pretrained part in a model trained from scratch or from `init`); every tensor must fit.
    init_parts: dict[str, Any] = _spec(*MAPPING, default={})


@dataclass
class DataConfig:
    name: str = _spec(*STRING)  # mmtok.data.build_dataset(name, split, **kwargs)
    split: str = _spec(*STRING, default="train")
    kwargs: dict[str, Any] = _spec(*MAPPING, default={})
    batch_size: int = _spec(*POSITIVE_INT, default=32)  # per process and micro-step
    num_workers: int = _spec(*COUNT, default=0)


@dataclass
class EvalConfig:
    name: str = _spec(*STRING)  # held-out data for model.evaluate(dataset, device)
    split: str = _spec(*STRING, default="test")
    kwargs: dict[str, Any] = _spec(*MAPPING, default={})
    every: int = _spec(*COUNT, default=0)  # also every N steps (0: only at the end)


@dataclass
class OptimConfig:
    lr: float = _spec(*POSITIVE, default=1e-3)
    weight_decay: float = _spec(*NON_NEGATIVE, default=0.0)  # not on biases, norms, embeddings
    betas: tuple[float, float] = _spec("two numbers in [0, 1)", _betas, default=(0.9, 0.95))
    eps: float = _spec(*POSITIVE, default=1e-8)
    warmup_steps: int = _spec(*COUNT, default=0)
    max_steps: int = _spec(*POSITIVE_INT, default=1000)  # optimizer steps (--max-steps overrides)
    schedule: str = _spec(*_one_of(SCHEDULES), default="cosine")
    min_lr_ratio: float = _spec(*FRACTION, default=0.0)  # final lr = lr * min_lr_ratio
    decay_steps: int = _spec(*COUNT, default=0)  # wsd: the last N steps decay linearly
    grad_clip: float = _spec(*NON_NEGATIVE, default=1.0)  # max global grad norm (0: no clipping)
    grad_accum: int = _spec(*POSITIVE_INT, default=1)  # micro-steps per optimizer step


@dataclass
class EmaConfig:
    enabled: bool = _spec(*BOOL, default=True)
    decay: float = _spec(*UNIT, default=0.999)
    warmup: bool = _spec(*BOOL, default=True)  # decay ramps up as 1 - (1 + step) ** -2/3 (timm)


@dataclass
class TrainConfig:
    seed: int = _spec(*COUNT, default=0)
    mixed_precision: str = _spec(_one_of(MIXED_PRECISION)[0], _precision, default="bf16")
    log_every: int = _spec(*POSITIVE_INT, default=20)
    ckpt_every: int = _spec(*COUNT, default=500)  # 0: only the final checkpoint
    keep_last: int = _spec(*POSITIVE_INT, default=2)
    threads: int = _spec(*COUNT, default=0)  # torch intra-op threads per process (0: torch's default)
    # ddp: every rank holds the whole model; fsdp: parameters, gradients and optimizer state sharded
    # over the ranks (FSDP2 fully_shard per block) -- for models that do not fit one device.
    strategy: str = _spec(*_one_of(STRATEGIES), default="ddp")


@dataclass
class ExportConfig:
    dtype: str = _spec(*_one_of(EXPORT_DTYPES), default="bf16")


@dataclass
class Config:
    name: str = _spec(*NAME)  # export name: weights/<name>, runs/<name>
    model: ModelConfig = _section(ModelConfig)
    data: DataConfig = _section(DataConfig)
    eval: EvalConfig | None = _section(EvalConfig, optional=True)  # held-out metrics at the end
    optim: OptimConfig = _section(OptimConfig)
    ema: EmaConfig = _section(EmaConfig)
    train: TrainConfig = _section(TrainConfig)
    export: ExportConfig = _section(ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the YAML key names (goes into checkpoints and config.yaml)."""
        return _to_dict(self)


# ----------------------------------------------------------------------------- building


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r}")
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
    values = {}
    for key, f in fields.items():
        where = f"{path}.{key}" if path else key
        if key not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing (expected {f.metadata['expect']})")
            continue
        value = data[key]
        if "section" in f.metadata:
            section = f.metadata["section"]
            values[f.name] = None if value is None and f.default is None else _build(section, value, where)
            continue
        try:
            values[f.name] = f.metadata["parse"](value)
        except _Bad:
            raise ConfigError(f"{where}: expected {f.metadata['expect']}, got {value!r}") from None
    return cls(**values)


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {_key(f): _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    return obj


def config_from_dict(data: Any) -> Config:
    """Validate a plain dict (parsed YAML or a checkpoint's config) into a ``Config``."""
    cfg = _build(Config, data, "")
    _check_names(cfg)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a YAML training config; ``ConfigError`` (one line) on any problem.

    A config may name another with ``base: other.yaml`` (relative to its own folder): it inherits that
    mapping, its own keys deep-merged over it (nested mappings merge, lists and scalars replace; bases
    may chain). ``overrides`` are ``mmtok train --set`` items, ``"optim.lr=3e-4"``: dotted key paths,
    values read as YAML, applied after the bases and before validation.
    """
    data = resolve_config(path)
    return config_from_dict(apply_overrides(data, overrides))


def resolve_config(path: str | Path) -> Any:
    """The config file's data with its ``base:`` chain merged in (not validated)."""
    return _resolve(Path(path), ())


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})") from e
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a config is YAML)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e


def _resolve(path: Path, chain: tuple[Path, ...]) -> Any:
    data = _read_yaml(path)
    if not isinstance(data, dict) or "base" not in data:
        return data
    data = dict(data)
    base = data.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected the path of a YAML config (relative to it), got {base!r}")
    base_path = path.parent / base
    seen = (*chain, path)
    if base_path.resolve() in {p.resolve() for p in seen}:
        cycle = " -> ".join(str(p) for p in (*seen, base_path))
        raise ConfigError(f"{path}: base: configs name each other in a cycle ({cycle})")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: no config file {base_path}")
    inherited = _resolve(base_path, seen)
    if not isinstance(inherited, dict):
        raise ConfigError(f"{base_path}: expected a mapping (a base config), got {inherited!r}")
    return deep_merge(inherited, data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings present in both merge key by key; anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(data: Any, overrides: Sequence[str]) -> Any:
    """``key.path=value`` items (``mmtok train --set``) on a config's data; values are read as YAML
    (``3e-4``, ``true``, ``null``, ``[0.9, 0.99]``). Unknown keys are left to validation, which names
    them as it names a config file's."""
    if not overrides:
        return data
    out = copy.deepcopy(data) if isinstance(data, dict) else {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. optim.lr=3e-4 or data.batch_size=64")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot read {raw!r} as a YAML value") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"--set {key}: {where} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def with_max_steps(cfg: Config, max_steps: int | None) -> Config:
    """Apply the ``--max-steps`` override (validated like ``optim.max_steps``)."""
    if max_steps is None:
        return cfg
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
        raise ConfigError(f"--max-steps: expected a positive integer, got {max_steps!r}")
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=max_steps))


def _check_names(cfg: Config) -> None:
    """The model class and dataset names must exist: fail before building anything."""
    classes = registered_classes()
    cls = classes.get(cfg.model.cls)
    if cls is None:
        known = ", ".join(sorted(n for n, c in classes.items() if hasattr(c, "training_step")))
        raise ConfigError(f"model.class: unknown model class {cfg.model.cls!r} (known: {known})")
    if not callable(getattr(cls, "training_step", None)):
        raise ConfigError(f"model.class: {cfg.model.cls} has no training_step(batch): it cannot be trained")
    for section in ("data", "eval"):
        sub = getattr(cfg, section)
        if sub is not None and sub.name not in DATASETS:
            known = ", ".join(sorted(DATASETS))
            raise ConfigError(f"{section}.name: unknown dataset {sub.name!r} (known: {known})")
