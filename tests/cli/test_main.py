"""The CLI entry point: version, help, lazy sub-commands, and the error -> exit code table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from hfserve import __version__
from hfserve.cli.errors import exit_code_for
from hfserve.cli.lazy import LazyCommand
from hfserve.cli.main import COMMANDS, app
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


COMMAND_MODULES = {entry.module for entry in COMMANDS}
HEAVY = ("torch", "transformers", "starlette", "uvicorn")


def _imports_of(*argv: str) -> set[str]:
    """Every module ``python -m hfserve ARGV`` imports, from ``-X importtime``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hfserve", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # [0] is the header


@pytest.mark.parametrize(
    ("argv", "loaded"),
    [
        (["--help"], set()),
        (["keys", "--help"], {"hfserve.cli.keys"}),
        (["serve", "--help"], {"hfserve.cli.serve"}),
    ],
    ids=["root", "keys", "serve"],
)
def test_help_imports_only_the_command_it_shows(argv: list[str], loaded: set[str]) -> None:
    modules = _imports_of(*argv)
    assert "hfserve.cli.main" in modules  # the probe does see hfserve's own modules
    assert modules & COMMAND_MODULES == loaded
    assert {m.split(".")[0] for m in modules} & set(HEAVY) == set()


def test_the_table_lists_every_command_in_help_order() -> None:
    assert [entry.name for entry in COMMANDS] == [
        "serve", "hardware", "bench", "keys", "skills", "models", "k8s",
    ]  # fmt: skip
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "100"})
    listed = result.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed] == [entry.name for entry in COMMANDS]


@pytest.mark.parametrize("entry", COMMANDS, ids=lambda entry: entry.name)
def test_short_help_in_the_table_matches_the_real_command(entry: LazyCommand) -> None:
    # Builds the command for real (imports its module), as `hfserve NAME` would.
    real = typer.main.get_command(app).commands[entry.name]  # type: ignore[attr-defined]
    assert not real.hidden
    assert real.get_short_help_str(10**6) == entry.short_help
    # What the root help prints at any terminal width: the same words, cut at the same place.
    for limit in (20, 45, 80):
        assert entry.stand_in().get_short_help_str(limit) == real.get_short_help_str(limit)


def test_root_help_is_the_same_before_and_after_the_commands_are_built() -> None:
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="hfserve", terminal_width=70)
    lazy = group.get_help(ctx)
    for entry in COMMANDS:
        group.commands[entry.name]  # type: ignore[attr-defined]
    assert group.get_help(ctx) == lazy
    assert "Commands:" in lazy


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["keys", "--help"], ["Usage: hfserve keys [OPTIONS] COMMAND", "create", "revoke"]),
        (["serve", "--help"], ["Usage: hfserve serve [OPTIONS]", "--model", "--workers"]),
    ],
    ids=["keys", "serve"],
)
def test_sub_command_help_through_main(
    argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from hfserve.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expected), out


@pytest.mark.parametrize(
    ("name", "message"),
    [("nope", "No such command 'nope'."), ("serv", "Did you mean 'serve'?")],
)
def test_unknown_command_is_a_usage_error(
    name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from hfserve.cli.main import main

    with pytest.raises(SystemExit) as info:
        main([name])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_shell_completion_lists_command_names() -> None:
    env = {"_HFSERVE_COMPLETE": "complete_bash", "COMP_WORDS": "hfserve k", "COMP_CWORD": "1"}
    result = CliRunner().invoke(app, [], env=env, prog_name="hfserve")
    assert result.output.split() == ["keys", "k8s"]


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
    from hfserve.hardware import auto_torch_threads, usable_cpus
    from hfserve.settings import Settings

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(var, "unset")  # registers the original value for restoring
        monkeypatch.delenv(var)
    # 0 (auto): the usable CPUs; waiting OpenMP threads spin briefly, then sleep.
    auto = auto_torch_threads(usable_cpus())
    assert apply_torch_threads(Settings.load(None)) == auto
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == str(auto)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
    # The operator's policy is kept, and a spin count is not added to it.
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("GOMP_SPINCOUNT")
    apply_torch_threads(Settings.load(None))
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "GOMP_SPINCOUNT" not in os.environ
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")  # ... nor is their own spin count replaced
    apply_torch_threads(Settings.load(None))
    assert os.environ["GOMP_SPINCOUNT"] == "500"
    # An operator's OMP_NUM_THREADS wins over auto ...
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert apply_torch_threads(Settings.load(None)) is None
    assert os.environ["OMP_NUM_THREADS"] == "3"
    # ... but not over an explicit --torch-threads.
    assert apply_torch_threads(Settings.load(None, torch_threads=1)) == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert os.environ["MKL_NUM_THREADS"] == "1"
