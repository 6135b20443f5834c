"""``hfserve skills``: list, show and search the skills (built-in and plugins)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from hfserve.skills.base import SkillInfo
    from hfserve.skills.registry import PluginError

__all__ = ["skills_app"]

skills_app = typer.Typer(
    help="The skills that load and serve models: built-ins and `hfserve.skills` plugins.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _render_table(title: str, skills: list[SkillInfo]) -> None:
    from rich.console import Console

    from hfserve.cli.render import Column, fit_table

    # Names, tasks and endpoints are never broken; on a narrow terminal the source goes first,
    # then the task (often the skill's own name), then the architectures.
    columns = [
        Column("name"),
        Column("task", drop=1),
        Column("architectures", wrap=True, drop=2),
        Column("endpoints"),
        Column("source", drop=0),
    ]
    rows = [
        [
            f"[bold]{info.name}[/bold]",
            info.task,
            ", ".join(info.architectures[:3]) + (", ..." if len(info.architectures) > 3 else "")
            or "-",
            "\n".join(info.endpoints) or "-",
            info.source,
        ]
        for info in skills
    ]
    console = Console()
    console.print(fit_table(title, columns, rows, console.width))


def _report_errors(errors: list[PluginError]) -> None:
    for error in errors:
        typer.secho(
            f"warning: skill plugin {error.entry_point} ({error.distribution}) "
            f"skipped: {error.message}",
            fg=typer.colors.YELLOW,
            err=True,
        )


@skills_app.command("list")
def list_command(json_output: JsonOption = False) -> None:
    """List every skill; broken plugins are reported on stderr."""
    from hfserve.skills.registry import SkillRegistry

    registry = SkillRegistry()
    skills = registry.list_skills()
    if json_output:
        typer.echo(json.dumps([info.to_dict() for info in skills], indent=2))
    else:
        _render_table("hfserve skills", skills)
    _report_errors(registry.errors)


@skills_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="Skill name, e.g. embeddings.")],
    json_output: JsonOption = False,
) -> None:
    """Show one skill's metadata."""
    from rich.console import Console
    from rich.table import Table

    from hfserve.errors import SkillNotFoundError
    from hfserve.skills.registry import SkillRegistry

    registry = SkillRegistry()
    info = next((i for i in registry.list_skills() if i.name == name), None)
    if info is None:
        names = ", ".join(i.name for i in registry.list_skills())
        raise SkillNotFoundError(f"no skill named {name!r}; skills: {names}")
    if json_output:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    table = Table(title=f"skill {info.name}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in info.to_dict().items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    Console().print(table)


@skills_app.command("search")
def search_command(
    query: Annotated[
        str | None, typer.Argument(help="Text in a name, description or arch.")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only skills for this task.")] = None,
    architecture: Annotated[
        str | None, typer.Option("--architecture", help="A model class, e.g. LlamaForCausalLM.")
    ] = None,
    hardware: Annotated[str | None, typer.Option("--hardware", help="cpu, cuda or mps.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Find skills by text, task, architecture or hardware."""
    from hfserve.skills.registry import SkillRegistry

    registry = SkillRegistry()
    found = registry.search(query, task=task, architecture=architecture, hardware=hardware)
    if json_output:
        typer.echo(json.dumps([info.to_dict() for info in found], indent=2))
    elif found:
        _render_table(f"skills matching {query or ''}".strip(), found)
    else:
        typer.echo("no skill matches; `hfserve skills list` shows them all")
    _report_errors(registry.errors)
