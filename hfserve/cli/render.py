"""Small rendering helpers shared by the CLI commands: byte counts and tables that fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["Column", "fit_table", "format_bytes"]


def format_bytes(n: int | float) -> str:
    """Render a byte count with a binary unit (``1.5 GiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class Column:
    """A table column: cells that wrap at spaces (``wrap``) or never break, and whether the
    column may be left out on a narrow terminal (``drop``: lower goes first; ``None``: never)."""

    header: str
    wrap: bool = False
    drop: int | None = None


def _needed(column: Column, cells: Sequence[str]) -> int:
    """The narrowest width that keeps every word of the column whole."""
    from rich.text import Text

    texts = [Text.from_markup(cell).plain for cell in cells]
    pieces = [p for t in texts for p in (t.split() if column.wrap else t.splitlines())]
    return max([len(column.header), *map(len, pieces)])


def fit_table(
    title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> Table:
    """A rich table that never breaks a word: a column that would have to is dropped instead.

    rich folds a cell mid-word once its column is narrower than the word (``text-generati``
    ``on``); so this works out each column's narrowest whole-word width and leaves out the
    droppable columns, lowest ``drop`` first, until the rest fit in ``width``.
    """
    from rich.table import Table

    keep = list(range(len(columns)))
    needed = {i: _needed(columns[i], [row[i] for row in rows]) for i in keep}
    droppable = sorted((c.drop, i) for i, c in enumerate(columns) if c.drop is not None)
    # Each column costs its cells plus two spaces of padding and one border; one more border.
    while sum(needed[i] + 3 for i in keep) + 1 > width and droppable:
        keep.remove(droppable.pop(0)[1])
    table = Table(title=title, title_justify="left")
    for i in keep:
        table.add_column(
            columns[i].header,
            no_wrap=not columns[i].wrap,
            overflow="fold" if columns[i].wrap else "ellipsis",
            min_width=needed[i],
        )
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table
