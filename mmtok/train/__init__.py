"""Training: a YAML config -> an accelerate loop (bf16, EMA, DDP, exact resume) -> weights/<name>.

    from mmtok.train import train_from_config
    summary = train_from_config("configs/judge-digits64.yaml", max_steps=100, out="runs/try")

See docs/training.md for the config schema, the run folder and resuming.
"""

from .config import Config, load_config
from .trainer import Trainer, train_from_config

__all__ = ["Config", "Trainer", "load_config", "train_from_config"]
