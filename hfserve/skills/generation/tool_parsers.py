"""Tool parsers: find the tool calls in what a model wrote, for ``tool_choice: "auto"``.

With ``auto`` the model decides whether to call a tool, and each model family writes calls its
own way, as its chat template taught it:

- ``hermes`` (Hermes, Qwen 2/2.5/3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  one block per call, possibly after some text;
- ``llama3_json`` (Llama 3.1-3.3): the whole reply is ``{"name": ..., "parameters": {...}}``,
  optionally after ``<|python_tag|>``, several calls separated by ``;``;
- ``mistral``: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``. ``[TOOL_CALLS]`` is a
  special token that decoding drops, so a reply that *is* such a JSON array counts too.

The format is chosen from the chat template (the markers it writes), else the model family.
Other formats plug in through the entry-point group ``hfserve.tool_parsers``: the name is the
format, the object a ``ToolParser`` class or instance.

A parser also tells the streaming encoder how much of the text so far might be the start of a
call (:meth:`ToolParser.hold_from`), so that text is held back rather than sent as content.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from hfserve.errors import InvalidRequestError

__all__ = [
    "ENTRY_POINT_GROUP",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "ParsedOutput",
    "ToolCall",
    "ToolParser",
    "detect_tool_format",
    "get_tool_parser",
]

ENTRY_POINT_GROUP = "hfserve.tool_parsers"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolCall:
    """One call: the function's name and its arguments as JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ParsedOutput:
    """A reply split into its text (None when there is none) and its tool calls."""

    content: str | None
    calls: list[ToolCall] = field(default_factory=list)


@runtime_checkable
class ToolParser(Protocol):
    """Finds tool calls in a model's reply."""

    name: str

    def parse(self, text: str) -> ParsedOutput:
        """Split a complete reply into content and calls (no calls if none parse)."""
        ...

    def hold_from(self, text: str) -> int:
        """Index in ``text`` (a reply so far) from which it may be a call; ``len(text)`` if none."""
        ...


def _call_from(obj: Any) -> ToolCall | None:
    """A call from ``{"name": ..., "arguments"|"parameters": {...}}``; None for anything else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        # Some models write the arguments as a JSON string, as OpenAI's API carries them.
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    return ToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False))


def _calls_from(objs: list[Any]) -> list[ToolCall] | None:
    calls = [_call_from(obj) for obj in objs]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _partial_marker(text: str, marker: str) -> int:
    """Start of ``marker`` in ``text``, or of a suffix of ``text`` that begins it; else len."""
    found = text.find(marker)
    if found >= 0:
        return found
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return len(text) - n
    return len(text)


def _content(text: str) -> str | None:
    """Text before the calls, as written (a stream has sent it already), None if blank."""
    return text if text.strip() else None


class HermesToolParser:
    """``<tool_call>{json}</tool_call>`` blocks (Hermes, Qwen)."""

    name = "hermes"
    _START = "<tool_call>"
    _BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text: str) -> ParsedOutput:
        """Calls from every block; the text before the first block is the content."""
        start = text.find(self._START)
        if start < 0:
            return ParsedOutput(text)
        objs = []
        for body in self._BLOCK.findall(text[start:]):
            try:
                objs.append(json.loads(body))
            except ValueError:
                return ParsedOutput(text)
        calls = _calls_from(objs)
        if calls is None:
            return ParsedOutput(text)
        return ParsedOutput(_content(text[:start]), calls)

    def hold_from(self, text: str) -> int:
        """From the (possibly partial) ``<tool_call>`` on."""
        return _partial_marker(text, self._START)


class Llama3JsonToolParser:
    """A reply that is JSON call(s), optionally after ``<|python_tag|>`` (Llama 3.x)."""

    name = "llama3_json"
    _TAG = "<|python_tag|>"

    def parse(self, text: str) -> ParsedOutput:
        """Calls if the whole reply is ``;``-separated call objects; otherwise all content."""
        body = text.strip().removeprefix(self._TAG).strip()
        if not body.startswith("{"):
            return ParsedOutput(text)
        decoder = json.JSONDecoder()
        objs, pos = [], 0
        try:
            while pos < len(body):
                obj, end = decoder.raw_decode(body, pos)
                objs.append(obj)
                pos = end
                while pos < len(body) and body[pos] in "; \n\t":
                    pos += 1
        except ValueError:
            return ParsedOutput(text)
        calls = _calls_from(objs)
        return ParsedOutput(text) if calls is None else ParsedOutput(None, calls)

    def hold_from(self, text: str) -> int:
        """Everything, while the reply so far could still be a call."""
        stripped = text.lstrip()
        if not stripped or stripped.startswith(("{", self._TAG)) or self._TAG.startswith(stripped):
            return 0
        return len(text)


class MistralToolParser:
    """``[TOOL_CALLS][{json}, ...]`` (Mistral), or a reply that is such an array."""

    name = "mistral"
    _MARKER = "[TOOL_CALLS]"

    def parse(self, text: str) -> ParsedOutput:
        """Calls from the array after the marker (or the whole reply); else all content."""
        start = text.find(self._MARKER)
        if start >= 0:
            content, body = text[:start], text[start + len(self._MARKER) :]
        else:
            content, body = "", text
        try:
            objs = json.loads(body)
        except ValueError:
            return ParsedOutput(text)
        calls = _calls_from(objs if isinstance(objs, list) else [objs])
        return ParsedOutput(text) if calls is None else ParsedOutput(_content(content), calls)

    def hold_from(self, text: str) -> int:
        """From the marker on, or everything while the reply could be the array itself."""
        stripped = text.lstrip()
        if not stripped or stripped.startswith("["):
            return 0
        return _partial_marker(text, self._MARKER)


_BUILTIN: dict[str, Callable[[], ToolParser]] = {
    HermesToolParser.name: HermesToolParser,
    Llama3JsonToolParser.name: Llama3JsonToolParser,
    MistralToolParser.name: MistralToolParser,
}

# Markers a chat template writes, in the order they are checked, and the families' defaults.
_TEMPLATE_MARKERS = (
    ("<tool_call>", "hermes"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|python_tag|>", "llama3_json"),
    ("ipython", "llama3_json"),
)
_FAMILIES = (
    ("qwen", "hermes"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("llama", "llama3_json"),
)


def detect_tool_format(template: str | None, model_type: str | None) -> str:
    """The tool format a model writes: from its chat template's markers, else its family."""
    for marker, name in _TEMPLATE_MARKERS:
        if template and marker in template:
            return name
    family = (model_type or "").lower()
    for prefix, name in _FAMILIES:
        if family.startswith(prefix):
            return name
    return HermesToolParser.name


def _plugins() -> Mapping[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # a broken plugin must not take the server down
            logger.warning("tool parser plugin %s failed to load: %s", ep.name, exc)
    return found


def get_tool_parser(name: str) -> ToolParser:
    """The parser for format ``name``: a built-in or an ``hfserve.tool_parsers`` plugin.

    Raises:
        InvalidRequestError: no parser has that name (param ``tools``).
    """
    factory: Any = _BUILTIN.get(name)
    if factory is None:
        factory = _plugins().get(name)
    parser = factory() if isinstance(factory, type) else factory
    if not isinstance(parser, ToolParser):
        raise InvalidRequestError(
            f"no tool parser named {name!r}; built in: {', '.join(sorted(_BUILTIN))}",
            param="tools",
        )
    return parser
