"""Tool calls enforced by a grammar: the JSON schema of the call(s) and a streaming decoder.

With ``tool_choice`` ``required`` or a named function the model is not asked nicely to call a
tool: its output is constrained to JSON of the call(s) - ``{"name": <one of the functions>,
"arguments": <that function's parameters schema>}``, or an array of them when parallel calls
are allowed - so the arguments always validate against the function's schema.

The grammar is compact and emits properties in the declared order, so the text is exactly
``{"name":"NAME","arguments":ARGS}`` (joined by ``,`` inside ``[...]`` for an array). The
:class:`ForcedCallDecoder` reads that text as it streams and reports each call's name as soon
as it is complete and then its argument text in fragments, which is what OpenAI's streamed
``tool_calls`` deltas carry. It is written by hand because it needs *positions* inside an
incomplete JSON document (where the arguments start and end), which JSON libraries do not give.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfserve.skills.generation.tool_parsers import ToolCall

__all__ = ["CallDelta", "ForcedCallDecoder", "decode_forced_calls", "forced_call_schema"]

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_HEAD = '{"name":"'
_MID = '","arguments":'


def _rebase_refs(schema: Any, base: str) -> Any:
    """``schema`` with its local ``$ref`` pointers moved under ``base`` (a JSON pointer).

    A function's parameters are embedded in the call's schema, so a ``"#/$defs/Unit"`` in
    them (pydantic writes such refs) would point at the root of the call's schema instead of
    the parameters' own ``$defs``.
    """
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#"):
                out[key] = "#" + base + value[1:]
            else:
                out[key] = _rebase_refs(value, base)
        return out
    if isinstance(schema, list):
        return [_rebase_refs(item, base) for item in schema]
    return schema


def _call_schema(name: str, parameters: Mapping[str, Any] | None, at: str) -> dict[str, Any]:
    """The schema of one call, placed at JSON pointer ``at`` of the whole schema."""
    arguments = dict(parameters) if parameters is not None else _EMPTY_PARAMETERS
    return {
        "type": "object",
        "properties": {
            "name": {"const": name},
            "arguments": _rebase_refs(arguments, at + "/properties/arguments"),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def forced_call_schema(
    functions: Sequence[tuple[str, Mapping[str, Any] | None]], *, parallel: bool
) -> dict[str, Any]:
    """The JSON schema of a forced call to one of ``functions`` (``(name, parameters)``).

    ``parallel`` allows one or more calls (a JSON array); otherwise exactly one call.
    """
    root = "/items" if parallel else ""
    if len(functions) == 1:
        one = _call_schema(*functions[0], at=root)
    else:
        one = {
            "anyOf": [
                _call_schema(name, parameters, at=f"{root}/anyOf/{i}")
                for i, (name, parameters) in enumerate(functions)
            ]
        }
    if parallel:
        return {"type": "array", "items": one, "minItems": 1}
    return one


@dataclass(frozen=True)
class CallDelta:
    """A piece of a streamed call: its name (first piece only) or more of its arguments."""

    index: int
    name: str | None = None
    arguments: str = ""


class ForcedCallDecoder:
    """Reads the streamed text of forced calls and splits it into :class:`CallDelta` pieces."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pos = 0
        self._state = "call"
        self._index = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._calls: list[list[str]] = []
        self.malformed = False

    def feed(self, text: str) -> list[CallDelta]:
        """Add generated text; return the pieces it completes."""
        self._buffer += text
        out: list[CallDelta] = []
        while not self.malformed and self._step(out):
            pass
        return out

    def calls(self) -> list[ToolCall]:
        """The calls decoded so far whose arguments are complete, valid JSON."""
        done = self._calls if self._state != "args" else self._calls[:-1]
        out = []
        for name, arguments in done:
            try:
                json.loads(arguments)
            except ValueError:
                continue
            out.append(ToolCall(name=name, arguments=arguments))
        return out

    def _step(self, out: list[CallDelta]) -> bool:
        """Advance one state; False when more text is needed."""
        buf, pos = self._buffer, self._pos
        if self._state == "call":
            while pos < len(buf) and buf[pos] in "[,]":
                pos += 1
            self._pos = pos
            if len(buf) - pos < len(_HEAD):
                self.malformed = not _HEAD.startswith(buf[pos:])
                return False
            if not buf.startswith(_HEAD, pos):
                self.malformed = True
                return False
            self._pos, self._state = pos + len(_HEAD), "name"
            return True
        if self._state == "name":
            # Function names are [a-zA-Z0-9_-]+ (OpenAI's rule): no quotes or escapes inside.
            end = buf.find('"', pos)
            if end < 0:
                return False
            self._calls.append([buf[pos:end], ""])
            self._pos, self._state = end, "mid"
            return True
        if self._state == "mid":
            if len(buf) - pos < len(_MID):
                self.malformed = not _MID.startswith(buf[pos:])
                return False
            if not buf.startswith(_MID, pos):
                self.malformed = True
                return False
            out.append(CallDelta(self._index, name=self._calls[-1][0]))
            self._pos, self._state = pos + len(_MID), "args"
            self._depth, self._in_string, self._escaped = 0, False, False
            return True
        if self._state == "args":
            value_end = self._scan_value(buf, pos)
            stop = len(buf) if value_end is None else value_end
            if stop > pos:
                self._calls[-1][1] += buf[pos:stop]
                out.append(CallDelta(self._index, arguments=buf[pos:stop]))
            self._pos = stop
            if value_end is None:
                return False
            self._state = "close"
            return True
        # "close": the call object's own closing brace (the scan stopped on a character).
        if buf[pos] != "}":
            self.malformed = True
            return False
        self._pos, self._state, self._index = pos + 1, "call", self._index + 1
        return True

    def _scan_value(self, buf: str, pos: int) -> int | None:
        """Where the arguments value ends (exclusive), or None if it continues past the text."""
        for i in range(pos, len(buf)):
            ch = buf[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                if self._depth == 0:
                    return i
                self._depth -= 1
            elif ch == "," and self._depth == 0:
                return i
        return None


def decode_forced_calls(text: str) -> list[ToolCall] | None:
    """The calls in the complete output of a forced call; None if it is cut short or malformed."""
    decoder = ForcedCallDecoder()
    decoder.feed(text)
    calls = decoder.calls()
    try:
        json.loads(text)
    except ValueError:
        return None
    return calls or None
