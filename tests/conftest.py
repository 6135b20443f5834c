"""Shared fixtures: offline mode and the tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.plugins import install_offline
from tests.fixtures.redis_server import redis_server, redis_server_module  # noqa: F401
from tests.fixtures.tiny_models import TinyModels, build_tiny_models
from tests.fixtures.tiny_vision import build_tiny_llava

# No test may reach the Hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Fixtures that build or load a model, start a server or redis-server, or run a system tool that
# only `bash .ci/run` installs: a test that uses one, directly or through another fixture, is slow
# by construction and is marked so here rather than by hand, so `pytest -m "not slow"` stays the
# fast loop (pip-installed tools only) as tests are added.
SLOW_FIXTURES = frozenset({"tiny_models", "redis_server", "redis_server_module", "run_tool"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow every test that uses a slow fixture or is an integration test."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES or item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Tiny GPT-2, Llama, BERT and BERT-classifier folders, built once per session."""
    return build_tiny_models(Path(tmp_path_factory.mktemp("tiny-models")))


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Llama text model) folder, built once."""
    return build_tiny_llava(Path(tmp_path_factory.mktemp("tiny-vision")) / "tiny-llava")


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site dir with the test skill plugin (tests/plugin_dist) pip-installed, offline."""
    target = tmp_path_factory.mktemp("plugin-site")
    source = Path(__file__).parent / "plugin_dist"
    return install_offline(source, target)


@pytest.fixture
def echo_plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the installed test plugin on sys.path and PYTHONPATH for this test only."""
    monkeypatch.syspath_prepend(str(plugin_site))
    existing = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(plugin_site), existing])))
    return plugin_site
