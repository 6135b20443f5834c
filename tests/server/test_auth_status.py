"""Auth is never a surprise: its state and reason, the flip warning, the open-host refusal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hfserve.core.keystore import KeyStore
from hfserve.core.rate_limiter import RateLimiter
from hfserve.errors import ConfigError
from hfserve.runtime.loader import ModelLoader
from hfserve.server.metrics import Metrics
from hfserve.server.state import ServerState
from hfserve.settings import Settings, is_loopback


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings.load(None, keys_file=tmp_path / "keys.json", **values)


def test_status_line_says_state_and_reason(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    assert _settings(tmp_path).auth_status(0) == "auth off: no keys yet (hfserve keys create)"
    assert _settings(tmp_path).auth_status(1) == f"auth on: 1 key in {keys}"
    assert _settings(tmp_path).auth_status(3) == f"auth on: 3 keys in {keys}"
    assert _settings(tmp_path, auth=False).auth_status(3) == "auth off: --no-auth"
    assert _settings(tmp_path, auth=True).auth_status(0) == (
        f"auth on: no keys yet in {keys}, every request is refused"
    )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("my-host.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_reachable_host_without_keys_is_refused_unless_auth_is_off(tmp_path: Path) -> None:
    open_host = _settings(tmp_path, host="0.0.0.0")
    with pytest.raises(
        ConfigError, match=r"refusing to serve on 0\.0\.0\.0 without API keys"
    ) as info:
        open_host.check_exposure(0)
    assert info.value.param == "host"
    open_host.check_exposure(1)
    _settings(tmp_path, host="0.0.0.0", auth=False).check_exposure(0)
    _settings(tmp_path, host="0.0.0.0", auth=True).check_exposure(0)
    _settings(tmp_path).check_exposure(0)


def test_running_server_warns_when_keys_turn_auth_on_and_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path)
    metrics = Metrics()
    store = KeyStore(settings.keys_file, reload_interval=0)
    state = ServerState(
        settings=settings,
        loader=ModelLoader(settings, observer=metrics),
        keystore=store,
        rate_limiter=RateLimiter(),
        response_cache=None,
        metrics=metrics,
    )
    caplog.set_level(logging.WARNING, logger="hfserve.server")
    assert state.auth_enabled() is False
    assert caplog.records == []  # the first look is the start-up state, not a change
    store.create("first")
    assert state.auth_enabled() is True
    assert state.auth_enabled() is True
    [on] = caplog.records
    assert on.levelno == logging.WARNING
    assert on.getMessage() == (
        f"auth on: 1 key in {settings.keys_file} (changed while running); "
        "requests without a key now get 401"
    )
    settings.keys_file.unlink()
    assert state.auth_enabled() is False
    assert caplog.records[-1].getMessage() == (
        "auth off: no keys yet (hfserve keys create) (changed while running); requests need no key"
    )
