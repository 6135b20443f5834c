"""Fixtures for the hardening suite: the in-process client and one real, keyed server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hfserve.core.keystore import KeyStore
from tests.fixtures.tiny_models import TinyModels
from tests.integration.conftest import ServerProcess, spawn_server, wait_ready
from tests.server.conftest import client, make_client, model_args  # noqa: F401 - re-exported fixtures

# The real API key the keyed server accepts; tests scan its log for this exact text.
KEY_NAME = "hardening"


@dataclass
class KeyedServer:
    """A running ``hfserve serve`` with auth on, debug logging, and its one valid key."""

    process: ServerProcess
    key: str

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def log(self) -> str:
        return self.process.log()


def error_shape(body: Any) -> dict[str, Any]:
    """Assert ``body`` is exactly the OpenAI error shape and return its ``error`` object."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert "Traceback" not in err["message"], err
    assert isinstance(err["type"], str), err
    return err  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> Iterator[KeyedServer]:
    """One real server for the session: tiny models, a keys file with one key, debug logs."""
    home = tmp_path_factory.mktemp("keyed-server")
    keys_file = home / "keys.json"
    _, key = KeyStore(keys_file).create(KEY_NAME)
    server = spawn_server(home, model_args(tiny_models), keys_file, "--log-level", "debug")
    try:
        wait_ready(server)
        yield KeyedServer(server, key)
    finally:
        if server.proc.poll() is None:
            server.stop()


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    """The keys file ``make_client`` servers read (auth turns on once it holds a key)."""
    return tmp_path / "keys.json"
