"""``ModelSpec``: one model the server offers, from ``--model [ALIAS=]PATH_OR_ID`` or a
``--models-dir`` entry.

``is_model_path`` is the one place that decides whether a path holds something hfserve can
load: a folder with a ``config.json`` (what transformers and every skill read), or a model
file such as a ``.gguf``. ``--models-dir`` offers exactly the entries it accepts, so teaching
hfserve a new on-disk format is one suffix in ``MODEL_FILE_SUFFIXES``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from hfserve.errors import ConfigError

__all__ = [
    "MODEL_FILE_SUFFIXES",
    "ModelSpec",
    "discover_models",
    "is_model_path",
    "parse_chat_templates",
    "parse_model_spec",
]

logger = logging.getLogger(__name__)

# Single-file model formats offered from ``--models-dir`` (by file name, without the suffix).
MODEL_FILE_SUFFIXES: tuple[str, ...] = (".gguf",)


@dataclass(frozen=True)
class ModelSpec:
    """A servable model: the name clients use, where it comes from, and how it is treated.

    ``pinned`` models (``--model``) are preloaded and never evicted; unpinned ones
    (``--models-dir``) load on first use and leave memory by LRU, byte budget or idle time.
    ``chat_template``, when set, is a Jinja file that replaces the model's own chat template.
    ``build``, when set, creates the folder ``source`` before the first load (the offline demo
    chat model); it runs in the loader's worker thread and must be idempotent.
    """

    alias: str
    source: str
    task: str | None = None
    pinned: bool = True
    label: str = ""
    chat_template: Path | None = None
    build: Callable[[Path], Path] | None = field(default=None, compare=False, repr=False)


def is_model_path(path: Path) -> bool:
    """Whether ``path`` holds a model hfserve can try to load: a folder with a
    ``config.json``, or a file with a suffix in ``MODEL_FILE_SUFFIXES``."""
    if path.is_dir():
        return (path / "config.json").is_file()
    return path.is_file() and path.suffix.lower() in MODEL_FILE_SUFFIXES


def _alias_of(path: Path) -> str:
    return path.stem if path.is_file() else path.name


def discover_models(folder: Path, *, task: str | None = None) -> list[ModelSpec]:
    """Unpinned specs for every model entry of ``folder`` (sorted by name), named after the
    sub-folder or the file without its suffix.

    Hidden entries are skipped; when two entries would share a name (``m/`` and ``m.gguf``)
    the first in name order wins and the other is logged.

    Raises:
        ConfigError: ``folder`` is not a folder.
    """
    if not folder.is_dir():
        raise ConfigError(f"no such folder: {folder} (--models-dir)")
    specs: dict[str, ModelSpec] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or not is_model_path(entry):
            continue
        alias = _alias_of(entry)
        if alias in specs:
            logger.warning("--models-dir: %s is shadowed by %s", entry, specs[alias].source)
            continue
        specs[alias] = ModelSpec(alias=alias, source=str(entry.resolve()), task=task, pinned=False)
    return list(specs.values())


def _default_alias(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve().name
    if path.is_file() or path.suffix.lower() == ".gguf":
        # A model file (``./models/llama.gguf``) is named like in --models-dir: never by its path
        # (a .gguf that is not there yet too: start-up then says "no such file" under that name).
        return path.stem
    # A Hub id keeps its namespace ("Qwen/Qwen2.5-0.5B-Instruct"): that is what clients know.
    return source.rstrip("/")


def parse_model_spec(text: str, *, task: str | None = None, pinned: bool = True) -> ModelSpec:
    """Parse ``[ALIAS=]PATH_OR_ID``; the alias defaults to the folder name, the GGUF file's
    name without ``.gguf``, or the Hub id.

    Raises:
        ConfigError: the text is empty or the alias or source part is empty.
    """
    raw = text.strip()
    alias, sep, source = raw.partition("=")
    if not sep or Path(raw).expanduser().is_dir():
        # A folder whose name holds "=" is still just a folder.
        alias, sep, source = "", "", raw
    alias, source = alias.strip(), source.strip()
    if not source or (sep and not alias):
        raise ConfigError(f"bad model {text!r}: use PATH_OR_ID or ALIAS=PATH_OR_ID")
    if source.startswith("~"):
        source = str(Path(source).expanduser())
    return ModelSpec(alias=alias or _default_alias(source), source=source, task=task, pinned=pinned)


def parse_chat_templates(items: list[str], aliases: Collection[str]) -> dict[str, Path]:
    """Parse ``ALIAS=FILE`` items (``--chat-template``) into alias -> template file.

    Raises:
        ConfigError: an item is malformed, names an alias not served, or twice the same alias.
    """
    out: dict[str, Path] = {}
    for item in items:
        alias, sep, file = (part.strip() for part in item.partition("="))
        if not sep or not alias or not file:
            raise ConfigError(f"bad chat template {item!r}: use ALIAS=FILE")
        if alias not in aliases:
            raise ConfigError(
                f"chat template for {alias!r}, which is not served; served: {', '.join(aliases)}"
            )
        if alias in out:
            raise ConfigError(f"two chat templates for {alias!r}")
        out[alias] = Path(file).expanduser()
    return out
