"""``hfserve models inspect``: which skill, device and dtype a model gets, and its memory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hfserve.cli.render import format_bytes

__all__ = ["models_app"]

models_app = typer.Typer(
    help="Inspect models before serving them.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _config_of(source: str) -> dict[str, Any]:
    """The model's config as a dict; empty when unreadable (a --task was given instead)."""
    folder = Path(source)
    try:
        if folder.is_dir():
            data: dict[str, Any] = json.loads((folder / "config.json").read_text("utf-8"))
            return data
        from transformers import AutoConfig

        config: dict[str, Any] = AutoConfig.from_pretrained(source).to_dict()
    except (OSError, ValueError):
        return {}
    return config


@models_app.command("inspect")
def inspect_command(
    model: Annotated[str, typer.Argument(help="A model folder, GGUF file or Hub id.")],
    task: Annotated[str | None, typer.Option("--task", help="Force a task or skill name.")] = None,
    device: Annotated[
        str, typer.Option("--device", envvar="HFSERVE_DEVICE", help="auto, cpu, cuda[:N], mps.")
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option("--dtype", envvar="HFSERVE_DTYPE", help="auto, float32, float16, bfloat16."),
    ] = "auto",
    load: Annotated[
        bool, typer.Option("--load/--no-load", help="Load it to measure real memory.")
    ] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the skill, device, dtype and estimated memory of a model, then load it to measure.

    For a GGUF file it also shows the architecture and quantization type, read from the file's
    header without dequantizing anything.
    """
    from rich.console import Console

    from hfserve.hardware import probe
    from hfserve.runtime.inspection import estimate_gguf_memory, estimate_memory
    from hfserve.runtime.sources import check_source
    from hfserve.skills.gguf_files import find_gguf, read_gguf_info
    from hfserve.skills.registry import SkillRegistry

    check_source(model)  # "no such folder: …" or the offline hint, at once
    console = Console(stderr=json_output)
    report = probe(device, dtype)
    choice = report.choice
    gguf = find_gguf(model)
    gguf_facts: dict[str, Any] = {}
    if gguf is not None:
        info = read_gguf_info(gguf)
        estimate = estimate_gguf_memory(info, choice.dtype)
        gguf_facts = {
            "format": "gguf",
            "architecture": info.architecture,
            "quantization": info.quantization,
            "tensor_types": info.tensor_types,
            "file_bytes": info.file_bytes,
        }
    skill = SkillRegistry().resolve(model, task)
    if gguf is None:
        folder = Path(model) if Path(model).is_dir() else None
        estimate = estimate_memory(folder, _config_of(model), choice.dtype)
    result: dict[str, Any] = {
        "model": model,
        "skill": skill.info.name,
        "task": skill.info.task,
        "endpoints": list(skill.info.endpoints),
        "device": choice.device,
        "dtype": choice.dtype,
        "device_reason": choice.reason,
        "parameters": estimate.parameters,
        "estimated_memory_bytes": estimate.bytes,
        "estimate_basis": estimate.method,
        **gguf_facts,
    }
    if load:
        result.update(_load_and_measure(model, skill, choice.device, choice.dtype, console))
    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    _render(result, console)


def _load_and_measure(
    model: str, skill: Any, device: str, dtype: str, console: Any
) -> dict[str, Any]:
    from hfserve.errors import HfServeError, ModelLoadError
    from hfserve.skills.base import RuntimeOptions

    started = time.perf_counter()
    with console.status(f"loading {model} with skill {skill.info.name} on {device} ({dtype})..."):
        try:
            loaded = skill.load(model, device, dtype, RuntimeOptions())
        except HfServeError:
            raise
        except Exception as exc:  # third-party loaders raise OSError, ValueError, ...
            raise ModelLoadError(f"cannot load {model}: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - started
    facts = {
        "memory_bytes": loaded.memory_bytes(),
        "max_input_tokens": loaded.max_input_tokens,
        "load_seconds": round(seconds, 3),
    }
    import asyncio

    asyncio.run(loaded.aclose())
    return facts


def _render(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"model {result['model']}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("skill", f"{result['skill']} ({result['task']})")
    table.add_row("endpoints", ", ".join(result["endpoints"]) or "-")
    table.add_row("device", f"[green]{result['device']}[/green] ({result['device_reason']})")
    table.add_row("dtype", result["dtype"])
    if result.get("format") == "gguf":
        table.add_row("architecture", f"{result['architecture']} (GGUF)")
        types = ", ".join(f"{kind} x{n}" for kind, n in result["tensor_types"].items())
        table.add_row("quantization", f"{result['quantization']} (tensors: {types})")
        table.add_row("file size", format_bytes(result["file_bytes"]))
    table.add_row("parameters", f"{result['parameters']:,}")
    table.add_row(
        "estimated memory",
        f"{format_bytes(result['estimated_memory_bytes'])} (from {result['estimate_basis']})",
    )
    if "memory_bytes" in result:
        table.add_row("measured memory", format_bytes(result["memory_bytes"]))
        table.add_row("max input tokens", str(result["max_input_tokens"]))
        table.add_row("load time", f"{result['load_seconds']:.2f}s")
    console.print(table)
