"""Shared fixtures: offline mode and the tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.tiny_models import TinyModels, build_tiny_models

# No test may reach the Hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tiny GPT-2, Llama, BERT and BERT-classifier folders, built once per session."""
    return build_tiny_models(Path(tmp_path_factory.mktemp("tiny-models")))
