"""Run under ``torchrun --nproc_per_node 2``: train a tiny config with DDP (gloo on CPU), then write
what each rank ended with -- a hash of its parameters and EMA weights, and the dataset indices it
read -- to ``<report_dir>/rank<R>.json`` for tests/train/test_train_dist.py to compare.

    torchrun --standalone --nproc_per_node 2 tests/train/dist_train.py CONFIG RUN EXPORT REPORTS [RESUME]
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from mmtok.train.config import load_config
from mmtok.train.trainer import Trainer


class Recorded(torch.utils.data.Dataset):
    """Wraps the real dataset and notes every index this rank reads (num_workers must be 0)."""

    def __init__(self, dataset):
        self.dataset, self.seen = dataset, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.seen.append(int(index))
        return self.dataset[index]


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(config: str, run_dir: str, export_dir: str, report_dir: str, resume: str | None = None) -> None:
    trainer = Trainer(load_config(config), out=run_dir, export=export_dir)
    trainer.dataset = Recorded(trainer.dataset)
    summary = trainer.fit(resume=resume)
    acc = trainer.accelerator
    report = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "backend": str(acc.distributed_type),
        "params": digest(trainer.model),
        "ema": digest(trainer.ema.module) if trainer.ema is not None else None,
        "seen": trainer.dataset.seen,
        "summary": summary,
    }
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    (Path(report_dir) / f"rank{acc.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:6])
