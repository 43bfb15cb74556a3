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
def weights_dir(tmp_path, monkeypatch):
    """An empty $MMTOK_WEIGHTS so tests never see (or write to) the shipped weights/."""
    root = tmp_path / "weights"
    root.mkdir()
    monkeypatch.setenv("MMTOK_WEIGHTS", str(root))
    return root
