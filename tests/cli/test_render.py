"""CLI rendering helpers: byte counts, and tables that keep words whole on narrow terminals."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console

from hfserve.cli.render import Column, fit_table, format_bytes

COLUMNS = [Column("name"), Column("words", wrap=True, drop=1), Column("extra", drop=0)]
ROWS = [["text-classification", "alpha beta gamma delta", "builtin"], ["x", "y", "z"]]


def _render(table: object, width: int) -> str:
    console = Console(width=width, file=io.StringIO())
    console.print(table)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**5) == "3072.0 TiB"


def test_wide_terminals_get_every_column() -> None:
    table = fit_table("t", COLUMNS, ROWS, 120)
    assert [c.header for c in table.columns] == ["name", "words", "extra"]


@pytest.mark.parametrize(
    ("width", "headers"),
    [(120, ["name", "words", "extra"]), (36, ["name", "words"]), (28, ["name"]), (10, ["name"])],
)
def test_columns_are_dropped_lowest_first_and_words_stay_whole(
    width: int, headers: list[str]
) -> None:
    table = fit_table("t", COLUMNS, ROWS, width)
    assert [c.header for c in table.columns] == headers
    text = _render(table, max(width, 24))
    assert "text-classification" in text  # never broken, even when nothing else fits
    if "words" in headers:
        for word in ("alpha", "beta", "gamma", "delta"):
            assert word in text


def test_a_header_wider_than_its_cells_sets_the_width() -> None:
    table = fit_table("t", [Column("a-long-header")], [["x"]], 80)
    assert table.columns[0].min_width == len("a-long-header")


@pytest.mark.parametrize("columns", ["80", "60"])
def test_skills_list_keeps_every_skill_name_whole(columns: str) -> None:
    # As a user runs it: the console script in a real process, its width from COLUMNS.
    done = subprocess.run(
        [sys.executable, "-m", "hfserve", "skills", "list"],
        env=os.environ | {"COLUMNS": columns, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert all(len(line) <= int(columns) for line in lines)
    for name in ("text-generation", "embeddings", "text-classification"):
        assert any(f"│ {name} " in line for line in lines), done.stdout
    for endpoint in ("/v1/chat/completions", "/v1/embeddings", "/v1/classifications"):
        assert endpoint in done.stdout
