"""Shared test set-up: CPU only, offline, small thread count, isolated weights folder when asked."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def load_script():
    """Import one of scripts/*.py (not a package) as a module: ``load_script("binding_table")``."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty $MMTOK_WEIGHTS so tests never see (or write to) the shipped weights/."""
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv("MMTOK_WEIGHTS", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_xar(tmp_path_factory):
    """A tiny text-conditional xAR trained for 4 steps on cached kl-f8-64 latents (exported folder)."""
    import yaml

    from mmtok.train.trainer import train_from_config

    root = tmp_path_factory.mktemp("xar")
    latents = {"tokenizer": "kl-f8-64", "source": "shapes", "root": str(root / "latents")}
    config = {
        "name": "tiny-xar",
        "model": {
            "class": "XAR",
            "kwargs": {
                "dim": 32,
                "depth": 1,
                "heads": 2,
                "text_dim": 16,
                "text_layers": 1,
                "text_length": 48,
            },
        },  # fmt: skip
        "data": {
            "name": "latents",
            "split": "train",
            "batch_size": 8,
            "kwargs": {**latents, "options": {"resolution": 64, "size": 32}},
        },  # fmt: skip
        "eval": {"name": "latents", "split": "test", "kwargs": {**latents, "options": {"size": 16}}},
        "optim": {"lr": 1.0e-3, "warmup_steps": 1, "max_steps": 4},
        "train": {"log_every": 2, "ckpt_every": 0, "threads": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = train_from_config(path, out=root / "run", export=root / "tiny-xar")
    assert summary["steps"] == 4 and summary["eval"]["n"] == 16 and summary["eval"]["val_mse"] > 0
    return root / "tiny-xar"
