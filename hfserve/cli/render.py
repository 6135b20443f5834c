"""Small rendering helpers shared by the CLI commands."""

from __future__ import annotations

__all__ = ["format_bytes"]


def format_bytes(n: int | float) -> str:
    """Render a byte count with a binary unit (``1.5 GiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
