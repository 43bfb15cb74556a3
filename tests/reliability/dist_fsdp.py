"""Run under ``torchrun --nproc_per_node 2``: train a tiny config with ``train.strategy: fsdp`` (FSDP2 over
gloo on CPU) and write ``<report_dir>/rank<R>.json`` (summary, whether parameters were sharded).

    torchrun --standalone --nproc_per_node 2 tests/reliability/dist_fsdp.py CONFIG RUN EXPORT REPORTS [RESUME]
"""

import json
import sys
from pathlib import Path

from mmtok.train.config import load_config
from mmtok.train.trainer import Trainer


def main(config: str, run_dir: str, export_dir: str, report_dir: str, resume: str | None = None) -> None:
    trainer = Trainer(load_config(config), out=run_dir, export=export_dir)
    summary = trainer.fit(resume=resume)
    acc = trainer.accelerator
    param = next(trainer.model.parameters())
    report = {
        "rank": acc.process_index,
        "world": acc.num_processes,
        "fsdp": trainer.fsdp,
        "sharded": type(param).__name__ == "DTensor",
        "local_numel": int(param.to_local().numel()) if hasattr(param, "to_local") else int(param.numel()),
        "full_numel": int(param.numel()),
        "summary": summary,
    }
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    (Path(report_dir) / f"rank{acc.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:6])
