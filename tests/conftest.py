"""Shared fixtures. Everything runs offline; heavy models load once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test reads or writes the developer's ./.tether or a configured Chroma server."""
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "tether-home"))
    monkeypatch.delenv("TETHER_CHROMA_URL", raising=False)


@pytest.fixture(scope="session")
def embedder(tmp_path_factory):
    """The embedder the default configuration uses."""
    from retrieval.embeddings import embedder_for
    from tether.config import load_config

    return embedder_for(load_config(tmp_path_factory.mktemp("defaults")))


@pytest.fixture
def cfg(tmp_path):
    from tether.config import load_config

    return load_config(tmp_path / "data")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """The real SmolLM2-135M-Instruct, converted once per test session from the shipped GGUF."""
    from assistant.models import install_smollm2

    return install_smollm2(tmp_path_factory.mktemp("models"))
