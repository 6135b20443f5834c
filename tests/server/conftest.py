"""Fixtures for in-process server tests: the real app on the tiny models via TestClient."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hfserve.server.app import create_app
from hfserve.settings import Settings
from tests.fixtures.tiny_models import TinyModels

ClientFactory = Callable[..., Any]


def wait_ready(client: TestClient, timeout: float = 120.0) -> None:
    """Poll /ready until 200 (models preload in the background), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/ready")
        if response.status_code == 200:
            return
        assert "error" not in response.json(), response.json()
        time.sleep(0.05)
    raise AssertionError("server did not become ready")


def model_args(tiny: TinyModels) -> list[str]:
    """--model values for the tiny chat, embeddings and classification models."""
    return [f"tiny-llama={tiny.llama}", f"tiny-bert={tiny.bert}", f"tiny-cls={tiny.bert_cls}"]


@pytest.fixture
def make_client(tmp_path: Path, tiny_models: TinyModels) -> Iterator[ClientFactory]:
    """Build a started TestClient for settings overrides; closes every client at the end."""
    stack: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "models": model_args(tiny_models),
            "keys_file": tmp_path / "keys.json",
            "device": "cpu",
            "access_log": True,
        }
        values.update(overrides)
        settings = Settings.load(None, **values)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        stack.append(client)
        wait_ready(client)
        return client

    yield factory
    for client in reversed(stack):
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> Iterator[TestClient]:
    """One ready client per module, default settings and no keys (auth off).

    Shared to keep the suite fast: tests using it must not change server state (drain, keys);
    those use ``make_client``.
    """
    settings = Settings.load(
        None,
        models=model_args(tiny_models),
        keys_file=tmp_path_factory.mktemp("keys") / "keys.json",
        device="cpu",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as shared:
        wait_ready(shared)
        yield shared
