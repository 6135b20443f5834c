"""What a chat choice says, in OpenAI's shape: content, ``tool_calls``, or a legacy call.

An :class:`OutputPlan` is made once per request from its :class:`OutputRequest`: the compiled
grammar (each generation gets a fresh matcher from it) and how to read tool calls from the
text. For a whole reply it builds the ``message`` and ``finish_reason``
(:meth:`OutputPlan.message`); for a stream, a :class:`ChoiceStream` per choice turns text
pieces into ``delta`` objects the way OpenAI streams them: a tool call's first delta carries
its index, id, type, name and empty arguments, the next ones argument fragments.

Forced calls (``tool_choice`` ``required`` or named) stream their arguments as they are
generated. With ``auto``, text that may start a call is held back until the reply ends and is
then sent as calls (or as content, if it was not one after all).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from hfserve.errors import InvalidRequestError
from hfserve.server.structured import OutputRequest
from hfserve.skills.base import GenerationModel, Grammar, StructuredGenerationModel
from hfserve.skills.generation.forced_calls import ForcedCallDecoder, decode_forced_calls
from hfserve.skills.generation.tool_parsers import ToolCall, ToolParser, get_tool_parser

__all__ = ["ChoiceStream", "OutputPlan", "plan_output"]


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class OutputPlan:
    """How one request's output is constrained and read back."""

    request: OutputRequest
    grammar: Grammar | None = None
    parser: ToolParser | None = None

    def matcher(self) -> Any | None:
        """A fresh grammar matcher for one generation, or None when output is free."""
        return self.grammar.matcher() if self.grammar is not None else None

    def message(self, text: str, finish: str | None) -> tuple[dict[str, Any], str | None]:
        """The chat ``message`` and ``finish_reason`` of a complete reply."""
        calls: list[ToolCall] | None = None
        content: str | None = text
        if self.request.tool_mode == "forced":
            calls = decode_forced_calls(text)
            if calls:
                content = None
        elif self.request.tool_mode == "auto" and self.parser is not None:
            parsed = self.parser.parse(text)
            if parsed.calls:
                calls, content = parsed.calls, parsed.content
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if not calls:
            return message, finish
        if self.request.legacy:
            message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
            return message, "function_call"
        message["tool_calls"] = [
            {
                "id": _call_id(),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ]
        return message, "tool_calls"

    def stream(self) -> ChoiceStream:
        """A streaming encoder for one choice."""
        return ChoiceStream(self)


class ChoiceStream:
    """Turns one choice's streamed text into OpenAI ``delta`` objects."""

    def __init__(self, plan: OutputPlan) -> None:
        self._plan = plan
        self._legacy = plan.request.legacy
        self._forced = ForcedCallDecoder() if plan.request.tool_mode == "forced" else None
        self._parser = plan.parser if plan.request.tool_mode == "auto" else None
        self._text = ""
        self._sent = 0
        self._announced = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Deltas for the next piece of text."""
        self._text += text
        if self._forced is not None:
            return [self._call_delta(d.index, d.name, d.arguments) for d in self._forced.feed(text)]
        if self._parser is not None:
            # Monotonic: text already sent as content is never taken back.
            hold = max(self._parser.hold_from(self._text), self._sent)
            piece, self._sent = self._text[self._sent : hold], hold
            return [{"content": piece}] if piece else []
        return [{"content": text}] if text else []

    def finish(self, reason: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The last deltas and the choice's ``finish_reason`` once generation has ended."""
        if self._forced is not None:
            if self._announced:
                complete = decode_forced_calls(self._text) is not None
                return [], (self._tool_reason() if complete else reason)
            # No call got as far as its name: say what was generated, as the non-streamed answer.
            return ([{"content": self._text}] if self._text else []), reason
        if self._parser is not None:
            parsed = self._parser.parse(self._text)
            if not parsed.calls:
                rest = self._text[self._sent :]
                return ([{"content": rest}] if rest else []), reason
            deltas = []
            if parsed.content is not None and len(parsed.content) > self._sent:
                deltas.append({"content": parsed.content[self._sent :]})
            calls = parsed.calls[:1] if self._legacy else parsed.calls
            for index, call in enumerate(calls):
                deltas.append(self._call_delta(index, call.name, ""))
                deltas.append(self._call_delta(index, None, call.arguments))
            return deltas, self._tool_reason()
        return [], reason

    def _tool_reason(self) -> str:
        return "function_call" if self._legacy else "tool_calls"

    def _call_delta(self, index: int, name: str | None, arguments: str) -> dict[str, Any]:
        function: dict[str, Any] = {"arguments": arguments}
        call: dict[str, Any] = {"index": index}
        if name is not None:
            self._announced = True
            function = {"name": name, "arguments": arguments}
            call |= {"id": _call_id(), "type": "function"}
        if self._legacy:
            return {"function_call": function}
        return {"tool_calls": [call | {"function": function}]}


async def plan_output(request: OutputRequest, model: GenerationModel) -> OutputPlan:
    """Compile the request's grammar on ``model`` and pick its tool parser.

    Raises:
        InvalidRequestError: the model cannot constrain its output, or the schema is refused.
    """
    if request.schema is None and request.tool_mode is None:
        return OutputPlan(request)
    if not isinstance(model, StructuredGenerationModel):
        raise InvalidRequestError(
            "this model does not support structured output or tool calls",
            param=request.param if request.schema is not None else "tools",
        )
    grammar = None
    if request.schema is not None:
        grammar = await model.compile_grammar(request.schema, param=request.param)
    parser = get_tool_parser(model.tool_format) if request.tool_mode == "auto" else None
    return OutputPlan(request, grammar, parser)
