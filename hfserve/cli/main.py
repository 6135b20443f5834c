"""The ``hfserve`` Typer application and its entry point.

Sub-command modules are listed in :data:`COMMANDS` and imported only when that command runs
or shows its help (see :mod:`hfserve.cli.lazy`), so ``hfserve --help`` imports none of them.
Each must still stay light at import time: heavy libraries (torch, transformers, starlette,
uvicorn) are imported inside command bodies.
"""

from __future__ import annotations

import sys

import typer

from hfserve._version import __version__
from hfserve.cli.errors import exit_code_for
from hfserve.cli.lazy import LazyCommand, LazyTyperGroup
from hfserve.errors import HfServeError

__all__ = ["COMMANDS", "app", "main"]

# Root help order. short_help must be what the command itself declares (its help's first
# sentence); tests/cli/test_main.py builds each command and fails when the two differ.
COMMANDS: tuple[LazyCommand, ...] = (
    LazyCommand(
        "serve",
        "hfserve.cli.serve",
        "serve_command",
        "Serve models over an OpenAI-compatible HTTP API (flags > HFSERVE_* env > config file).",
    ),
    LazyCommand(
        "hardware",
        "hfserve.cli.hardware",
        "hardware_command",
        "Show CPU, RAM, CUDA/MPS devices and memory, and the device and dtype hfserve would use.",
    ),
    LazyCommand(
        "bench",
        "hfserve.cli.bench",
        "bench_command",
        "Benchmark an OpenAI-compatible server: throughput, E2E latency, TTFT, TPOT and ITL.",
    ),
    LazyCommand(
        "keys",
        "hfserve.cli.keys",
        "keys_app",
        "Create, list and revoke API keys (a running server picks changes up within a second).",
    ),
    LazyCommand(
        "skills",
        "hfserve.cli.skills",
        "skills_app",
        "The skills that load and serve models: built-ins and `hfserve.skills` plugins.",
    ),
    LazyCommand(
        "models", "hfserve.cli.models", "models_app", "Inspect models before serving them."
    ),
    LazyCommand(
        "k8s",
        "hfserve.cli.k8s",
        "k8s_app",
        "Kubernetes deployment: render manifests from your hfserve settings.",
    ),
)


class _RootGroup(LazyTyperGroup):
    """The root command: ``--version`` and the sub-commands of :data:`COMMANDS`, built lazily."""

    lazy_commands = COMMANDS


app = typer.Typer(
    name="hfserve",
    help="Serve HuggingFace transformers models in production: an OpenAI-compatible API, "
    "API keys, benchmarks and Kubernetes manifests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    cls=_RootGroup,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"hfserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the version and exit.",
        callback=_version_callback,
        is_eager=True,
    ),
) -> None:
    """Serve HuggingFace transformers models in production."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; hfserve errors become one line on stderr and a non-zero exit code."""
    try:
        app(args=argv, prog_name="hfserve")
    except HfServeError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        sys.exit(exit_code_for(exc))
