"""Lazy sub-commands: listed from the table, imported and built once, on first use only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from hfserve.cli.lazy import LazyCommand, LazyCommands, LazyTyperGroup

# The sub-commands the test group loads lazily live in this very module.
greet_app = typer.Typer(help="Greetings, in groups. Second sentence.", no_args_is_help=True)


@greet_app.command("hello")
def _hello(name: str = typer.Option("world", "--name")) -> None:
    """Say hello."""
    typer.echo(f"hello {name}")


def ping_command() -> None:
    """Answer pong. Then more words that the short help leaves out."""
    typer.echo("pong")


TABLE = (
    LazyCommand("ping", __name__, "ping_command", "Answer pong."),
    LazyCommand("greet", __name__, "greet_app", "Greetings, in groups."),
)


class _Group(LazyTyperGroup):
    lazy_commands = TABLE


def _app() -> typer.Typer:
    """An app like hfserve's root: a callback, the lazy table, and two eager commands."""
    app = typer.Typer(cls=_Group, add_completion=False, rich_markup_mode=None)

    @app.callback()
    def _root() -> None:
        """Root."""

    @app.command("eager")
    def _eager() -> None:
        """Registered on the app itself."""
        typer.echo("eager ran")

    @app.command("secret", hidden=True)
    def _secret() -> None:
        """Hidden from help."""

    return app


class _Recorder:
    """A build function that records which entries it built."""

    def __init__(self) -> None:
        self.built: list[str] = []

    def __call__(self, entry: LazyCommand) -> Any:
        self.built.append(entry.name)
        return typer.core.TyperCommand(entry.name, help=f"built {entry.name}")


def test_mapping_lists_and_answers_membership_without_building() -> None:
    build = _Recorder()
    commands = LazyCommands(TABLE, build, eager={})
    assert list(commands) == ["ping", "greet"] and len(commands) == 2
    assert "ping" in commands and "nope" not in commands
    assert commands.peek("ping").get_short_help_str() == "Answer pong."
    assert build.built == []


def test_mapping_builds_each_command_once_on_first_read() -> None:
    build = _Recorder()
    commands = LazyCommands(TABLE, build, eager={})
    first = commands["greet"]
    assert commands["greet"] is first and commands.peek("greet") is first
    assert build.built == ["greet"]
    with pytest.raises(KeyError):
        commands["nope"]


def test_mapping_keeps_eager_commands_after_the_lazy_ones() -> None:
    build = _Recorder()
    eager = typer.core.TyperCommand("eager")
    commands = LazyCommands(TABLE, build, eager={"eager": eager})
    later = typer.core.TyperCommand("later")
    commands["later"] = later
    commands["ping"] = later  # replacing keeps the place in the order
    assert list(commands) == ["ping", "greet", "eager", "later"]
    assert commands["eager"] is eager and commands["ping"] is later and build.built == []


def test_mapping_deletes_lazy_and_built_commands() -> None:
    commands = LazyCommands(TABLE, _Recorder(), eager={})
    commands["greet"]
    del commands["greet"]
    del commands["ping"]
    assert list(commands) == [] and "greet" not in commands
    with pytest.raises(KeyError):
        del commands["ping"]
    with pytest.raises(KeyError):
        commands["ping"]


def test_root_help_lists_the_table_then_eager_commands_without_importing() -> None:
    group = typer.main.get_command(_app())
    help_text = group.get_help(typer.Context(group, info_name="app", terminal_width=80))
    listed = help_text.split("Commands:\n", 1)[1].split()
    assert listed[:7] == ["ping", "Answer", "pong.", "greet", "Greetings,", "in", "groups."]
    assert "eager" in listed and "secret" not in listed
    commands = group.commands  # type: ignore[attr-defined]
    assert isinstance(commands, LazyCommands)
    # Still the stand-ins (no callback): listing them built nothing.
    assert commands.peek("ping").callback is None and commands.peek("greet").callback is None


def test_group_without_commands_prints_no_commands_section() -> None:
    app = typer.Typer(cls=LazyTyperGroup, add_completion=False, rich_markup_mode=None)

    @app.callback()
    def _root() -> None:
        """Root."""

    group = typer.main.get_command(app)
    assert "Commands" not in group.get_help(typer.Context(group, info_name="app"))


def test_lazy_function_and_typer_app_run_like_registered_ones() -> None:
    app = _app()
    runner = CliRunner()
    assert runner.invoke(app, ["ping"]).output == "pong\n"
    assert runner.invoke(app, ["greet", "hello", "--name", "ann"]).output == "hello ann\n"
    assert runner.invoke(app, ["eager"]).output == "eager ran\n"
    sub_help = runner.invoke(app, ["greet"], prog_name="app")
    assert "Usage: app greet [OPTIONS] COMMAND" in sub_help.output and "hello" in sub_help.output


def test_built_commands_carry_the_real_help() -> None:
    group = typer.main.get_command(_app())
    ping = group.commands["ping"]  # type: ignore[attr-defined]
    assert ping.help == "Answer pong. Then more words that the short help leaves out."
    assert ping.get_short_help_str(10**6) == "Answer pong."


def test_unknown_command_is_none_and_a_usage_error() -> None:
    group = typer.main.get_command(_app())
    assert group.get_command(typer.Context(group), "nope") is None  # type: ignore[attr-defined]
    result = CliRunner().invoke(_app(), ["pin"])
    assert result.exit_code == 2
    assert "No such command 'pin'. Did you mean 'ping'?" in result.output


def test_a_key_error_while_importing_is_not_reported_as_no_such_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "_hfserve_broken_cmd.py").write_text("raise KeyError('HOME_DIR')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "_hfserve_broken_cmd", raising=False)

    class Broken(LazyTyperGroup):
        lazy_commands = (LazyCommand("broken", "_hfserve_broken_cmd", "app", "Broken."),)

    app = typer.Typer(cls=Broken, add_completion=False)

    @app.callback()
    def _root() -> None:
        """Root."""

    group = typer.main.get_command(app)
    with pytest.raises(KeyError, match="HOME_DIR"):
        group.get_command(typer.Context(group), "broken")  # type: ignore[attr-defined]
