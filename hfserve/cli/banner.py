"""The start-up banner of ``hfserve serve``: where to call, on what device, with which models.

One row per fact, each from a small function, so a new fact (a hint, a state) is one more
row in ``banner_rows`` rather than another branch inside a long f-string.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from hfserve.hardware import DeviceChoice
    from hfserve.server.state import ServerState
    from hfserve.settings import Settings

__all__ = ["banner", "banner_rows", "print_banner"]

log = logging.getLogger("hfserve")

Row = tuple[str, str]


def _url_row(settings: Settings) -> Row:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    demo = "" if settings.models or settings.models_dir else "  [dim](built-in offline demo)[/]"
    return "URL", f"http://{host}:{settings.port}/v1{demo}"


def _device_row(choice: DeviceChoice) -> Row:
    return "Device", f"{choice.device} / {choice.dtype}  [dim]({escape(choice.reason)})[/]"


def _threads_rows(choice: DeviceChoice) -> list[Row]:
    if choice.device != "cpu":
        return []
    threads = os.environ.get("OMP_NUM_THREADS") or "torch's default"
    policy = os.environ.get("OMP_WAIT_POLICY")
    spins = os.environ.get("GOMP_SPINCOUNT")
    wait = f", {policy.lower()} wait" if policy else ""
    if wait and spins:
        wait += f" after {spins} spins"
    return [("Threads", f"{threads} torch{wait}")]


def _auth_row(state: ServerState) -> Row:
    # "on: 3 keys in FILE", "off: --no-auth", "off: no keys yet (hfserve keys create)".
    return "Auth", escape(state.auth_status().removeprefix("auth "))


def _model_rows(state: ServerState) -> list[Row]:
    """One row per model: alias, skill, state (pinned and loaded at start, or on first use),
    then where it comes from."""
    loader = state.loader
    rows = []
    for alias, spec in loader.specs.items():
        skill = loader.skill_name(spec) or spec.task or "?"
        when = "pinned, loads at start" if spec.pinned else "loads on first use"
        source = escape(spec.label or spec.source)
        rows.append(f"[bold]{escape(alias)}[/]  {escape(skill)}  {when}\n[dim]{source}[/]")
    return [("Models" if i == 0 else "", row) for i, row in enumerate(rows or ["none"])]


def _hint_rows(settings: Settings, state: ServerState) -> list[Row]:
    """How to get a demo chat model that answers, when the random-weights one is served."""
    if settings.models:
        return []
    from hfserve.runtime.demo import demo_chat_hint

    hint = demo_chat_hint(list(state.loader.specs))
    return [("Hint", escape(hint))] if hint else []


def banner_rows(settings: Settings, state: ServerState, choice: DeviceChoice) -> list[Row]:
    """The banner's (label, value) rows, values in rich markup: URL, workers, the resolved
    device and dtype, torch's threads on a CPU, auth, then each model, then a hint when the demo chat is random."""
    return [
        _url_row(settings),
        ("Workers", str(settings.workers)),
        _device_row(choice),
        *_threads_rows(choice),
        _auth_row(state),
        *_model_rows(state),
        *_hint_rows(settings, state),
    ]


def banner(settings: Settings, state: ServerState, choice: DeviceChoice) -> Panel:
    """The banner as a panel; long values wrap at word boundaries under their own column."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for label, value in banner_rows(settings, state, choice):
        grid.add_row(label, value)
    return Panel(grid, title="hfserve", expand=False)


def print_banner(settings: Settings, state: ServerState, choice: DeviceChoice) -> None:
    """Show the banner on stderr: a panel for people, log records under ``--log-format json``
    (a log pipeline reading stderr wants one JSON object per line, not a box)."""
    if settings.log_format == "json":
        for label, value in banner_rows(settings, state, choice):
            log.info("%s %s", label or "Models", Text.from_markup(value).plain.replace("\n", " "))
        return
    Console(stderr=True).print(banner(settings, state, choice))
