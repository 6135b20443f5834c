"""The CLI entry point: version, help, and the error -> exit code table."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from hfserve import __version__
from hfserve.cli.errors import exit_code_for
from hfserve.cli.main import app
from hfserve.errors import (
    AuthError,
    CircuitOpenError,
    ConfigError,
    HfServeError,
    InvalidRequestError,
    KeyNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
    PermissionDeniedError,
    SkillNotFoundError,
)


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hfserve {__version__}"


def test_no_arguments_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "serve" in result.output and "keys" in result.output


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("x"), 2),
        (InvalidRequestError("x"), 2),
        (AuthError("x"), 3),
        (PermissionDeniedError("x"), 3),
        (KeyNotFoundError("x"), 4),
        (ModelNotFoundError("x"), 4),
        (SkillNotFoundError("x"), 4),
        (ModelLoadError("x"), 5),
        (OverloadedError("x"), 6),
        (CircuitOpenError("x", retry_after=3), 6),
        (HfServeError("x"), 1),
    ],
)
def test_exit_codes(exc: HfServeError, code: int) -> None:
    assert exit_code_for(exc) == code


def test_serve_rejects_workers_without_redis(capsys: pytest.CaptureFixture[str]) -> None:
    from hfserve.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--workers", "3", "--model", "x"])
    assert info.value.code == 2
    assert "--workers > 1 needs --redis-url" in capsys.readouterr().err


def test_torch_threads_are_fixed_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from hfserve.cli.serve import apply_torch_threads
    from hfserve.settings import Settings

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "unset")  # registers the original value for restoring
        monkeypatch.delenv(var)
    apply_torch_threads(Settings.load(None))
    assert "OMP_NUM_THREADS" not in os.environ  # 0 keeps torch's default
    apply_torch_threads(Settings.load(None, torch_threads=1))
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["MKL_NUM_THREADS"] == "1"
