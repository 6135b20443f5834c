"""``hfserve hardware``: what this machine has and what hfserve picks."""

from __future__ import annotations

import json

import typer

from hfserve.cli.render import format_bytes

__all__ = ["hardware_command"]


def hardware_command(
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    device: str = typer.Option(
        "auto",
        "--device",
        envvar="HFSERVE_DEVICE",
        help="Device to evaluate: auto, cpu, cuda[:N], mps.",
    ),
) -> None:
    """Show CPU, RAM, CUDA/MPS devices and memory, and the device and dtype hfserve would use."""
    from rich.console import Console
    from rich.table import Table

    from hfserve.hardware import probe

    report = probe(device)
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    table = Table(title="hfserve hardware", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    cores = f"{report.cpu_cores_logical} logical"
    if report.cpu_cores_physical:
        cores += f", {report.cpu_cores_physical} physical"
    table.add_row("CPU", f"{report.cpu_model} ({cores})")
    table.add_row(
        "RAM",
        f"{format_bytes(report.ram_available_bytes)} available of {format_bytes(report.ram_total_bytes)}",
    )
    table.add_row("Platform", f"{report.platform}, Python {report.python}")
    table.add_row("torch", report.torch_version or "not installed")
    if report.cuda_devices:
        for dev in report.cuda_devices:
            free = format_bytes(dev.free_memory_bytes) if dev.free_memory_bytes is not None else "?"
            table.add_row(
                f"CUDA {dev.index}",
                f"{dev.name}, {free} free of {format_bytes(dev.total_memory_bytes)}, "
                f"compute {dev.capability} (CUDA {report.cuda_version})",
            )
    else:
        table.add_row("CUDA", "not available")
    table.add_row("MPS", "available" if report.mps_available else "not available")
    choice = report.choice
    table.add_row(
        "hfserve uses", f"[green]{choice.device}[/green], {choice.dtype} ({choice.reason})"
    )
    Console().print(table)
