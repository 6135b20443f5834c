"""Where hfserve keeps files by default (standard library only: the light CLI commands use it)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir", "default_keys_file"]


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def default_keys_file() -> Path:
    """Where API keys live unless told otherwise: the user's config dir."""
    return _config_home() / "hfserve" / "keys.json"


def default_cache_dir() -> Path:
    """Where hfserve keeps generated artefacts (the demo chat model)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hfserve"
