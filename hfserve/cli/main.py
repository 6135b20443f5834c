"""The ``hfserve`` Typer application and its entry point.

Sub-command modules are imported here, so each must stay light at import time: heavy
libraries (torch, transformers, starlette, uvicorn) are imported inside command bodies.
"""

from __future__ import annotations

import sys

import typer

from hfserve._version import __version__
from hfserve.cli.bench import bench_command
from hfserve.cli.errors import exit_code_for
from hfserve.cli.hardware import hardware_command
from hfserve.cli.k8s import k8s_app
from hfserve.cli.keys import keys_app
from hfserve.cli.models import models_app
from hfserve.cli.serve import serve_command
from hfserve.cli.skills import skills_app
from hfserve.errors import HfServeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="hfserve",
    help="Serve HuggingFace transformers models in production: an OpenAI-compatible API, "
    "API keys, benchmarks and Kubernetes manifests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
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


app.command("serve")(serve_command)
app.command("hardware")(hardware_command)
app.add_typer(keys_app, name="keys")
app.add_typer(skills_app, name="skills")
app.add_typer(models_app, name="models")
app.add_typer(k8s_app, name="k8s")
app.command("bench")(bench_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; hfserve errors become one line on stderr and a non-zero exit code."""
    try:
        app(args=argv, prog_name="hfserve")
    except HfServeError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        sys.exit(exit_code_for(exc))
