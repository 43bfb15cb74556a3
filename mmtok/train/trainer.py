"""The trainer: one YAML config -> a trained, exported model, on a CPU, a GPU or many (accelerate).

Launch::

    mmtok train configs/judge-digits64.yaml                        # one process (CPU or GPU)
    torchrun --nproc_per_node 4 -m mmtok train configs/x.yaml       # DDP, one process per device
    accelerate launch --num_processes 2 -m mmtok train configs/x.yaml
    mmtok train configs/x.yaml --resume latest                      # continue a killed run exactly
    mmtok train configs/x.yaml --set train.seed=2 --set optim.lr=3e-4   # one-key overrides

A model family plugs in by implementing ``training_step(batch) -> (loss, logs)`` (and optionally
``evaluate(dataset, device) -> metrics``). The loop: AdamW (no decay on biases, norms, embeddings),
linear warm-up + cosine LR, gradient accumulation and clipping, bf16 autocast, EMA (timm
``ModelEmaV3``), atomic checkpoints with every rank's RNG state, and data order fixed by
(seed, step) so that a resumed run replays exactly what a straight run would have done.

Run folder (``runs/<name>`` or ``--out``): ``config.yaml`` (resolved config: ``base:`` merged,
``--set`` applied, defaults filled in), ``metrics.jsonl``, ``loss.png``, ``checkpoints/step_<N>.pt``.
Export (``weights/<name>`` or ``--export``): the final EMA model as bf16 safetensors with a README
(command, config, hardware, metrics).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .. import __version__, hub
from ..data import build_dataset
from ..errors import CheckpointError, ConfigError, MmtokError
from ..runtime import bf16_is_fast, pick_device, seed_everything
from .checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import Config, ModelConfig, load_config, with_max_steps

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ----------------------------------------------------------------------------- schedule and optimizer


def lr_factor(
    step: int, *, warmup: int, max_steps: int, schedule: str, min_ratio: float, decay_steps: int = 0
) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based).

    Linear warm-up reaching 1 at step ``warmup - 1``, then cosine / linear decay towards
    ``min_ratio`` at ``max_steps``, or constant. ``wsd`` (warmup-stable-decay, MiniCPM 2024) holds
    the peak and decays linearly over the last ``decay_steps`` only: a run can be lengthened with
    ``--resume latest --max-steps N`` at any point of its stable phase without changing its past.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        start = max(warmup, max_steps - decay_steps)
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, max_steps - start))
        return min_ratio + (1 - min_ratio) * (1 - progress)
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's split: decay matrices only; biases, norm gains, embeddings (and whatever the model
    lists in timm-style ``no_weight_decay()``) are left alone -- decaying them only hurts."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or id(p) in embeddings or name in skip
        (no_decay if plain else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# ----------------------------------------------------------------------------- data order


class StepSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices fixed by (seed, micro-step), sharded by rank.

    The stream is the concatenation of per-epoch permutations (epoch ``e`` is permuted by a NumPy
    generator seeded with ``[seed, e]``). Global micro-batch ``m`` covers stream positions
    ``[m * B * W, (m + 1) * B * W)``; rank ``r`` takes its ``r``-th slice of ``B``, so ranks see
    disjoint data and a run resumed at micro-step ``m`` starts exactly there without replaying.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.start = rank, world, start
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return int(self._perm[offset])

    def batch(self, micro_step: int) -> list[int]:
        first = (micro_step * self.world + self.rank) * self.batch_size
        return [self._at(p) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        m = self.start
        while True:
            yield self.batch(m)
            m += 1


class _TrainStep(nn.Module):
    """Routes the wrapper's forward to ``model.training_step`` so DDP (gradient sync) and
    accelerate's autocast both see the whole step, whatever the model calls inside it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]):
        return self.model.training_step(batch)


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """Builds everything from a ``Config``; ``fit(resume)`` trains, checkpoints, evaluates, exports."""

    def __init__(
        self,
        cfg: Config,
        *,
        out: str | os.PathLike | None = None,
        export: str | os.PathLike | None = None,
        command: str | None = None,
    ):
        from accelerate import Accelerator

        self.cfg = cfg
        self.run_dir = Path(out) if out else Path("runs") / cfg.name
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.export_dir = Path(export) if export else hub.weights_dirs()[0] / cfg.name
        self.command = command or "# trained through the Python API (mmtok.train.Trainer)"
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        # bf16 where it is faster; a CPU without native bf16 (AVX2 only, say) emulates it 24-100x slower
        # than fp32, so there the run trains in fp32 and the card says so.
        self.mixed_precision = cfg.train.mixed_precision
        if self.mixed_precision == "bf16" and not bf16_is_fast(pick_device()):
            self.mixed_precision = "no"
        self.accelerator = Accelerator(
            # accelerate runs DDP over gloo on CPUs only when told it is on CPU (cuda > mps > cpu here).
            cpu=pick_device().type == "cpu",
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=cfg.optim.grad_accum,
        )
        self.is_main = self.accelerator.is_main_process
        seed_everything(cfg.train.seed)  # same initial weights on every rank
        self.model = _build_model(cfg)
        # Rank 0 first: a dataset that builds a cache (latents) encodes once; the other ranks open it.
        with self.accelerator.main_process_first():
            self.dataset = _build_data(cfg.data, "data")
            # Built now, not at the first evaluation: a bad eval section must fail before training.
            self.eval_dataset = _build_data(cfg.eval, "eval") if cfg.eval is not None else None

    # -- public -------------------------------------------------------------------------------

    def fit(self, resume: str | os.PathLike | None = None) -> dict[str, Any]:
        """Train to ``optim.max_steps`` (from a checkpoint path or "latest" when ``resume``), evaluate,
        export on rank 0, and return a JSON-able summary."""
        cfg, acc = self.cfg, self.accelerator
        # FSDP (train.strategy: fsdp) shards parameters, gradients and optimizer state over the ranks;
        # with one process there is nothing to shard and the plain path runs.
        self.fsdp = cfg.train.strategy == "fsdp" and acc.num_processes > 1
        state = self._resume_state(resume)
        if state is not None:
            written = state.get("strategy", "ddp")
            if written != ("fsdp" if self.fsdp else "ddp"):
                raise CheckpointError(
                    f"{state['_path']}: written by a {written} run; resume it with that strategy"
                )
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as e:
                raise CheckpointError(f"{state['_path']}: weights do not match the model: {e}") from e
        if self.fsdp:  # EMA copy made and loaded whole, then model and copy sharded alike
            self.model.to(acc.device)
            ema = self.ema = self._make_ema()
            if ema is not None and state is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            wrapped = self._wrapped = _fsdp_shard(_TrainStep(self.model), acc.device.type)
            if ema is not None:
                _fsdp_shard(ema.module, acc.device.type)
            optimizer, scheduler = self._optimizer()  # over the sharded parameters
            optimizer = acc.prepare(optimizer)
        else:
            optimizer, scheduler = self._optimizer()
            wrapped, optimizer = acc.prepare(_TrainStep(self.model), optimizer)
            ema = self.ema = self._make_ema()  # after prepare: the copy lives where the model now lives

        start, seconds_before = 0, 0.0
        if state is not None:
            if self.fsdp:
                from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

                set_optimizer_state_dict(
                    wrapped, optimizer.optimizer, state["optimizer"], options=_full_options()
                )
            else:
                optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if not self.fsdp and ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            start, seconds_before = int(state["step"]), float(state.get("seconds", 0.0))
            self._restore_rng(state)
            self._note(f"resumed from {state['_path']} at step {start}")
        else:
            seed_everything(cfg.train.seed + acc.process_index)  # independent noise/dropout per rank
        if self.is_main:
            self._start_run_dir(start)

        t0 = time.perf_counter()
        seconds = lambda: seconds_before + time.perf_counter() - t0
        self.last_loss = float("nan")
        self._loop(wrapped, optimizer, scheduler, ema, iter(self._loader(start)), start, seconds)

        final, every = cfg.optim.max_steps, cfg.train.ckpt_every
        if start < final and not (every and final % every == 0):  # the loop has not saved it yet
            self._save(final, optimizer, scheduler, ema, seconds())
        best = self._best(ema)
        metrics = self._evaluate(best, final) if cfg.eval is not None else {}
        summary = {
            "name": cfg.name,
            "steps": final,
            "seconds": round(seconds(), 2),
            "final_loss": self._final_loss(),
            "eval": metrics,
            "export": None,
            "run_dir": str(self.run_dir),
            "resumed_from": start if state is not None else None,
            "world_size": acc.num_processes,
            "mixed_precision": self.mixed_precision,
        }
        if self.is_main:
            summary["export"] = str(self._export(best, summary))
            _plot(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png", cfg.name)
            loss = f"{summary['final_loss']:.4f}" if summary["final_loss"] is not None else "n/a"
            self._note(f"{final} steps in {summary['seconds']:.0f} s, final loss {loss}; run: {self.run_dir}")
        acc.wait_for_everyone()
        return summary

    def _optimizer(self):
        o = self.cfg.optim
        groups = param_groups(self.model, o.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
        # Stepped by hand once per optimizer step (accelerate's prepared scheduler steps num_processes
        # times per call). A plain closure, not a callable object: its state_dict holds numbers only.
        factor = lambda s: lr_factor(
            s,
            warmup=o.warmup_steps,
            max_steps=o.max_steps,
            schedule=o.schedule,
            min_ratio=o.min_lr_ratio,
            decay_steps=o.decay_steps,
        )
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _loader(self, start: int) -> torch.utils.data.DataLoader:
        cfg, acc = self.cfg, self.accelerator
        sampler = StepSampler(
            len(self.dataset),
            cfg.data.batch_size,
            cfg.train.seed,
            acc.process_index,
            acc.num_processes,
            start=start * cfg.optim.grad_accum,
        )
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=sampler,
            # Items depend only on their index, so the worker count changes speed, never the data: cap
            # it to the machine (a GPU config asking for 6 workers still runs on a 2-core laptop).
            num_workers=min(cfg.data.num_workers, max(0, (os.cpu_count() or 1) - 1)),
            pin_memory=acc.device.type == "cuda",
            # Its own generator: creating the loader must not draw from the global RNG we restored.
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, wrapped, optimizer, scheduler, ema, batches, start, seconds) -> None:
        from accelerate.utils import send_to_device
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = cfg.optim.grad_clip or math.inf  # inf: measure the norm, never clip
        bar = tqdm(
            total=cfg.optim.max_steps,
            initial=start,
            desc=cfg.name,
            file=sys.stderr,
            disable=not self.is_main,
            dynamic_ncols=True,
        )
        wrapped.train()
        try:  # a failed save or step must not leave the bar open in front of its error line
            for step in range(start + 1, cfg.optim.max_steps + 1):  # `step` = optimizer steps done after it
                loss_sum, grad_norm, logs = 0.0, torch.zeros(()), {}
                for _ in range(cfg.optim.grad_accum):
                    batch = send_to_device(next(batches), acc.device)
                    with acc.accumulate(wrapped):
                        with acc.autocast() if self.fsdp else contextlib.nullcontext():
                            loss, logs = wrapped(batch)  # (DDP: accelerate's prepare added autocast)
                        acc.backward(loss)  # accelerate divides by grad_accum
                        if acc.sync_gradients:
                            grad_norm = acc.clip_grad_norm_(params, clip)
                            if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
                                grad_norm = grad_norm.full_tensor()
                        optimizer.step()  # a no-op until the last micro-step
                        optimizer.zero_grad(set_to_none=True)
                    loss_sum = loss_sum + loss.detach()
                scheduler.step()
                if ema is not None:
                    ema.update(self.model, step=step)
                bar.update(1)

                if step % cfg.train.log_every == 0 or step == cfg.optim.max_steps:
                    record = self._log_record(
                        step, loss_sum / cfg.optim.grad_accum, grad_norm, logs, seconds()
                    )
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                every = cfg.eval.every if cfg.eval is not None else 0
                if every and step % every == 0 and step < cfg.optim.max_steps:  # the last one: in fit()
                    self._evaluate(self._best(ema), step)
                    wrapped.train()
                if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0:
                    self._save(step, optimizer, scheduler, ema, seconds())
        finally:
            bar.close()

    def _log_record(self, step, loss, grad_norm, logs, seconds) -> dict[str, Any]:
        # One collective for loss and the model's logs: the logged values are the mean over ranks.
        names = sorted(k for k, v in logs.items() if isinstance(v, int | float | torch.Tensor))
        values = [loss, grad_norm, *(logs[k] for k in names)]
        stacked = torch.tensor(
            [float(v) for v in values], device=self.accelerator.device
        )  # may live anywhere
        stacked = self.accelerator.reduce(stacked, "mean").cpu()
        loss_v, norm_v, *rest = stacked.tolist()
        self.last_loss = loss_v
        record = {
            "kind": "train",
            "step": step,
            "loss": loss_v,
            "lr": self._lr(step - 1),
            "grad_norm": norm_v,
            "seconds": round(seconds, 3),
            **dict(zip(names, rest, strict=True)),
        }
        self._write_metrics(record)
        return record

    def _lr(self, step: int) -> float:
        o = self.cfg.optim
        return o.lr * lr_factor(
            step,
            warmup=o.warmup_steps,
            max_steps=o.max_steps,
            schedule=o.schedule,
            min_ratio=o.min_lr_ratio,
            decay_steps=o.decay_steps,
        )

    # -- pieces -------------------------------------------------------------------------------

    def _make_ema(self):
        if not self.cfg.ema.enabled:
            return None
        from timm.utils.model_ema import ModelEmaV3

        # fp32 EMA copy on the training device, created after accelerate placed the model there.
        return ModelEmaV3(self.model, decay=self.cfg.ema.decay, use_warmup=self.cfg.ema.warmup)

    def _resume_state(self, resume) -> dict[str, Any] | None:
        if resume is None:
            return None
        if str(resume) == "latest":
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:  # diffusers' convention: `--resume latest` on a fresh run just starts it
                self._note(f"no checkpoint in {self.ckpt_dir}: starting a new run")
                return None
        else:
            path = Path(resume)
        state = load_checkpoint(path)
        state["_path"] = str(path)
        _check_resumable(state, self.cfg)
        saved = state["config"]
        if "strategy" not in saved.get("train", {}):  # written before train.strategy existed: ddp
            saved = {**saved, "train": {**saved.get("train", {}), "strategy": "ddp"}}
        changed = _changed_keys(saved, self.cfg.to_dict())
        if changed:
            self._note(f"config differs from the checkpoint's in {', '.join(changed)}: not an exact resume")
        return state

    def _restore_rng(self, state: dict[str, Any]) -> None:
        rng, acc = state["rng"], self.accelerator
        saved_world = int(rng["torch"].shape[0])
        if saved_world == acc.num_processes:
            set_rng_state({k: v[acc.process_index] for k, v in rng.items()})
        else:  # a different world size cannot continue each rank's stream; reseed deterministically
            self._note(f"checkpoint has {saved_world} ranks' RNG states, this run {acc.num_processes}")
            seed_everything(self.cfg.train.seed + acc.process_index + 1_000_003 * int(state["step"]))

    def _save(self, step: int, optimizer, scheduler, ema, seconds: float) -> None:
        acc = self.accelerator
        # Every rank's RNG state, gathered to one tensor per generator ([world, ...]).
        rng = {
            k: acc.gather(v.to(acc.device).unsqueeze(0)).cpu() if acc.num_processes > 1 else v.unsqueeze(0)
            for k, v in rng_state().items()
        }
        if self.fsdp:  # whole tensors gathered to rank 0 (collectives: every rank takes part)
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            model_state = _full_state(self._wrapped, "model.")
            optim_state = get_optimizer_state_dict(
                self._wrapped, optimizer.optimizer, options=_full_options()
            )
            ema_state = {f"module.{k}": v for k, v in _full_state(ema.module).items()} if ema else None
        elif self.is_main:
            model_state, optim_state = self.model.state_dict(), optimizer.state_dict()
            ema_state = ema.state_dict() if ema is not None else None
        if self.is_main:
            state = {
                "step": step,
                "seconds": seconds,
                "model": model_state,
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "ema": ema_state,
                "strategy": "fsdp" if self.fsdp else "ddp",
                "config": self.cfg.to_dict(),
                "rng": rng,
                "world_size": acc.num_processes,
                "mmtok_version": _version(),
            }
            save_checkpoint(checkpoint_path(self.ckpt_dir, step), state)
            prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_last)
        acc.wait_for_everyone()

    def _best(self, ema) -> nn.Module | None:
        """The model to evaluate and export: the EMA copy (or the model). Under FSDP a whole copy,
        gathered to rank 0 (None on the other ranks, which must call this too)."""
        if not self.fsdp:
            return ema.module if ema is not None else self.model
        state = _full_state(ema.module) if ema is not None else _full_state(self._wrapped, "model.")
        if not self.is_main:
            return None
        model = hub.model_class(self.cfg.model.cls)(**self.cfg.model.kwargs)
        model.load_state_dict(state)
        return model.to(self.accelerator.device).eval()

    def _evaluate(self, model: nn.Module, step: int) -> dict[str, Any]:
        """``model.evaluate`` on the eval split, on rank 0 (the others wait at the next collective)."""
        metrics: dict[str, Any] = {}
        if self.is_main and hasattr(model, "evaluate"):
            with torch.no_grad():
                metrics = dict(model.evaluate(self.eval_dataset, self.accelerator.device))
            metrics = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
            self._write_metrics({"kind": "eval", "step": step, **metrics})
        self.accelerator.wait_for_everyone()
        return metrics

    def _start_run_dir(self, start: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        # Keep the log lines up to the resumed step; the rest will be written again, identically.
        path = self.run_dir / "metrics.jsonl"
        kept = [r for r in _read_jsonl(path) if r.get("step", 0) <= start] if start else []
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _final_loss(self) -> float | None:
        if not math.isnan(self.last_loss):
            return self.last_loss
        train = [r for r in _read_jsonl(self.run_dir / "metrics.jsonl") if r.get("kind") == "train"]
        return train[-1]["loss"] if train else None

    def _export(self, model: nn.Module, summary: dict[str, Any]) -> Path:
        readme = _readme(self, model, summary)
        dtype = DTYPES[self.cfg.export.dtype]
        hub.save(model, self.export_dir, readme=readme, metrics=summary["eval"], dtype=dtype)
        self._note(f"exported {type(model).__name__} to {self.export_dir}")
        return self.export_dir

    def _note(self, message: str) -> None:
        if self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(f"mmtok train: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- helpers


def _fsdp_shard(module: nn.Module, device_type: str) -> nn.Module:
    """FSDP2 (``fully_shard``): each block of every ``nn.ModuleList`` (deepest first), then the whole
    module, sharded over all ranks; parameters become DTensors, gathered per block for its compute."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    lists = [(name.count("."), m) for name, m in module.named_modules() if isinstance(m, nn.ModuleList)]
    for _, blocks in sorted(lists, key=lambda item: -item[0]):
        for block in blocks:
            if any(p.requires_grad for p in block.parameters()):
                fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def _full_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Whole (unsharded) CPU tensors of an FSDP module's state dict on rank 0 ({} on the others),
    ``prefix`` stripped from the keys. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(module, options=_full_options())
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _build_model(cfg: Config) -> nn.Module:
    cls = hub.model_class(cfg.model.cls)
    try:
        model = cls(**cfg.model.kwargs)
    except TypeError as e:  # unknown or missing constructor argument
        raise ConfigError(f"model.kwargs: {cfg.model.cls} rejects them: {e}") from e
    if cfg.model.init is not None:
        source = hub.load(cfg.model.init)
        if type(source) is not cls:
            raise ConfigError(
                f"model.init: {cfg.model.init} holds a {type(source).__name__}, not a {cfg.model.cls}"
            )
        try:
            # A model may widen a smaller source (BinaryTokenizer: more bits) through its own loader.
            load = getattr(model, "load_init_state_dict", model.load_state_dict)
            result = load(source.state_dict(), strict=cfg.model.init_strict)
        except RuntimeError as e:  # same class, other kwargs (shapes differ)
            raise ConfigError(f"model.init: {cfg.model.init} does not fit model.kwargs: {e}") from e
        if result.unexpected_keys:
            raise ConfigError(
                f"model.init: {cfg.model.init} has tensors this model lacks: "
                + ", ".join(result.unexpected_keys[:5])
            )
        if result.missing_keys:
            print(
                f"model.init: {len(result.missing_keys)} new tensor(s) keep their initial values "
                f"({', '.join(result.missing_keys[:4])}{', ...' if len(result.missing_keys) > 4 else ''})",
                file=sys.stderr,
            )
    for prefix, path in cfg.model.init_parts.items():
        _load_part(model, str(prefix), path)
    return model


def _load_part(model: nn.Module, prefix: str, path: Any) -> None:
    """model.init_parts: the tensors of one safetensors file into one submodule, strictly."""
    import safetensors.torch

    try:
        part = model.get_submodule(prefix)
    except AttributeError as e:
        raise ConfigError(f"model.init_parts: {type(model).__name__} has no submodule {prefix!r}") from e
    if not isinstance(path, str) or not Path(path).is_file():
        raise ConfigError(f"model.init_parts.{prefix}: no safetensors file at {path!r}")
    try:
        part.load_state_dict(safetensors.torch.load_file(path), strict=True)
    except (RuntimeError, safetensors.SafetensorError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"model.init_parts.{prefix}: {path} does not fit: {first}") from e


def _build_data(sub, section: str):
    try:
        dataset = build_dataset(sub.name, split=sub.split, **sub.kwargs)
    except ConfigError as e:  # the registry's message, located in the config
        raise ConfigError(f"{section}: {e}") from e
    except TypeError as e:
        raise ConfigError(f"{section}.kwargs: dataset {sub.name!r} rejects them: {e}") from e
    if len(dataset) == 0:
        raise ConfigError(f"{section}: dataset {sub.name!r} split {sub.split!r} is empty")
    return dataset


_INIT_KEYS = ("init", "init_strict", "init_parts")


def _check_resumable(state: dict[str, Any], cfg: Config) -> None:
    path, saved = state["_path"], state["config"].get("model", {})
    # Checkpoints written before a model field existed lack it: they were made with its default.
    defaults = {}
    for f in dataclasses.fields(ModelConfig):
        if f.default_factory is not dataclasses.MISSING:  # mappings such as init_parts
            defaults[f.metadata.get("key", f.name)] = f.default_factory()
        elif f.default is not dataclasses.MISSING:
            defaults[f.metadata.get("key", f.name)] = f.default
    saved = {**defaults, **saved}
    # init, init_strict and init_parts only choose the weights of step 0, which the checkpoint replaces:
    # a moved or renamed init file must not block a resume (the differing keys are still reported).
    arch = {k: v for k, v in saved.items() if k not in _INIT_KEYS}
    wanted = {k: v for k, v in cfg.to_dict()["model"].items() if k not in _INIT_KEYS}
    if arch != wanted:
        raise CheckpointError(f"{path}: it was trained with model {arch}, the config says {wanted}")
    if int(state["step"]) > cfg.optim.max_steps:
        raise CheckpointError(
            f"{path}: checkpoint is at step {state['step']}, beyond max_steps {cfg.optim.max_steps}"
        )


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the half-written last line of a killed run
            continue
    return records


def _version() -> str:
    return __version__


def _hardware(acc) -> str:
    if acc.device.type == "cuda":
        name = torch.cuda.get_device_name(acc.device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"CPU {name}, {torch.get_num_threads()} threads/process"
    return f"{acc.num_processes} x {name} (torch {torch.__version__})"


def _readme(trainer: Trainer, model: nn.Module, summary: dict[str, Any]) -> str:
    cfg, acc = trainer.cfg, trainer.accelerator
    doc = (type(model).__doc__ or "").strip().splitlines()
    what = doc[0] if doc else type(model).__name__
    n_params = sum(p.numel() for p in model.parameters())
    global_batch = cfg.data.batch_size * acc.num_processes * cfg.optim.grad_accum
    lines = [
        f"# {cfg.name}",
        "",
        f"`{type(model).__name__}` ({getattr(model, 'task', 'model')}): {what}",
        f"{n_params:,} parameters, stored as {cfg.export.dtype} safetensors"
        + (" (EMA weights)." if cfg.ema.enabled else "."),
        "Load it with `mmtok.load(<this folder or its name>)`.",
        "",
        "## How it was made",
        "",
        "```bash",
        trainer.command,
        "```",
        "",
        f"- data: `{cfg.data.name}` split `{cfg.data.split}` ({len(trainer.dataset)} items), "
        f"global batch {global_batch}",
        f"- steps: {summary['steps']} optimizer steps in {summary['seconds']:.0f} s"
        + (f" (resumed at step {summary['resumed_from']}, exactly)" if summary["resumed_from"] else ""),
        f"- hardware: {_hardware(acc)}, mixed precision {trainer.mixed_precision}"
        + (
            f" (the config asks {cfg.train.mixed_precision}: this device has no native bf16, emulated bf16 "
            "runs slower than fp32)"
            if trainer.mixed_precision != cfg.train.mixed_precision
            else ""
        ),
        f"- final training loss: {summary['final_loss']:.4f}"
        if summary["final_loss"] is not None
        else "- final training loss: n/a",
        f"- mmtok {_version()}",
        "",
        "## Metrics",
        "",
    ]
    if summary["eval"]:
        lines += [f"On `{cfg.eval.name}` split `{cfg.eval.split}`:", "", "| metric | value |", "|---|---|"]
        for key, value in summary["eval"].items():
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    else:
        lines.append("No held-out evaluation was configured.")
    config = yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()
    lines += ["", "## Config", "", "```yaml", config, "```", ""]
    return "\n".join(lines)


def _plot(metrics: Path, png: Path, title: str) -> None:
    """Loss (and LR) against step; eval metrics as points on a second panel when there are any."""
    # A bare Figure renders with Agg without pyplot: headless, and the caller's backend is untouched.
    from matplotlib.figure import Figure

    records = _read_jsonl(metrics)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig = Figure(figsize=(10 if evals else 6, 4))
    axes = fig.subplots(1, 2 if evals else 1, squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    losses = [r["loss"] for r in train]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:  # log only when it spans decades
        ax.set_yscale("log")
    lr = ax.twinx()
    lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:orange", alpha=0.5)
    lr.set_ylabel("learning rate", color="tab:orange")
    if evals:
        keys = [k for k, v in evals[-1].items() if k not in ("kind", "step") and isinstance(v, float)]
        for key in keys:
            axes[0, 1].plot([r["step"] for r in evals], [r.get(key) for r in evals], "o-", label=key)
        axes[0, 1].set_xlabel("step")
        axes[0, 1].set_title("eval")
        axes[0, 1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, png)


def _command(config_path, max_steps, out, export, overrides=()) -> str:
    """The command line that reproduces this run (resume flags dropped: resuming is exact)."""
    args = ["mmtok", "train", str(config_path)]
    for item in overrides:
        args += ["--set", str(item)]
    args += ["--max-steps", str(max_steps)] if max_steps is not None else []
    args += ["--out", str(out)] if out is not None else []
    args += ["--export", str(export)] if export is not None else []
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        args = ["torchrun", "--nproc_per_node", str(local), "-m", *args]
    return shlex.join(args)


def train_from_config(
    config_path: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    max_steps: int | None = None,
    resume: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    export: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train from a YAML config (``mmtok train``); returns a JSON-able summary. ``overrides`` are
    ``--set key=value`` items (``load_config``); the run folder records the config they resolve to."""
    cfg = with_max_steps(load_config(config_path, overrides), max_steps)
    threads = torch.get_num_threads()
    command = _command(config_path, max_steps, out, export, overrides)
    trainer = Trainer(cfg, out=out, export=export, command=command)
    try:
        return trainer.fit(resume=resume)
    except OSError as e:  # run folder or export not writable, disk full: one line, not a traceback
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        raise MmtokError(f"cannot write{where}: {e.strerror or e}") from None
    finally:
        _release(trainer.accelerator, threads)


def _release(accelerator, threads: int) -> None:
    """Leave the process as we found it for a next run in the same process (tests, notebooks):
    accelerate keeps its state in process-wide singletons and would refuse another mixed precision."""
    torch.set_num_threads(threads)
    if accelerator.num_processes == 1:  # a distributed process group lives as long as the process
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
