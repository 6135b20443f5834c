"""``ModelSpec``: one model the server offers, parsed from ``--model [ALIAS=]PATH_OR_ID``."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from hfserve.errors import ConfigError

__all__ = ["ModelSpec", "parse_chat_templates", "parse_model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """A servable model: the name clients use, where it comes from, and how it is treated.

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


def _default_alias(source: str) -> str:
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve().name
    # A Hub id keeps its namespace ("Qwen/Qwen2.5-0.5B-Instruct"): that is what clients know.
    return source.rstrip("/")


def parse_model_spec(text: str, *, task: str | None = None, pinned: bool = True) -> ModelSpec:
    """Parse ``[ALIAS=]PATH_OR_ID``; the alias defaults to the folder name or the Hub id.

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
