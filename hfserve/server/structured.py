"""Request fields for structured output and tool calls, and what they ask of the generation.

``response_format`` (``text``, ``json_object``, ``json_schema``), ``tools`` with
``tool_choice`` and ``parallel_tool_calls``, and the legacy ``functions`` / ``function_call``
(aliases of ``tools`` / ``tool_choice``; a request that used them gets the legacy
``function_call`` answer shape). :func:`output_request` reduces a body to one
:class:`OutputRequest`: the JSON schema to constrain decoding with (if any) and how to read
tool calls from the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from hfserve.errors import InvalidRequestError
from hfserve.skills.generation.forced_calls import forced_call_schema

__all__ = [
    "FunctionDefinition",
    "NamedToolChoice",
    "OutputRequest",
    "ResponseFormat",
    "Tool",
    "ToolChoice",
    "output_request",
]

# OpenAI's rule for function and schema names.
_Name = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class JsonSchemaFormat(_Open):
    """``response_format.json_schema``."""

    name: _Name
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None
    description: StrictStr | None = None


class ResponseFormat(_Open):
    """``response_format``: plain text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(_Open):
    """A function the model may call (``tools[].function``, or a legacy ``functions`` item)."""

    name: _Name
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class Tool(_Open):
    """One entry of ``tools``."""

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Open):
    name: _Name


class NamedToolChoice(_Open):
    """``tool_choice`` naming the one function the model must call."""

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
LegacyFunctionCall = Literal["none", "auto"] | FunctionName


@dataclass(frozen=True)
class OutputRequest:
    """What a request asks of the output.

    ``schema``: the JSON schema decoding is constrained to (``param`` names the field it came
    from), or None. ``tool_mode``: ``forced`` (the output is the calls, see
    :mod:`~hfserve.skills.generation.forced_calls`), ``auto`` (calls are parsed from free
    text), or None (no tool calls). ``tools`` go to the chat template. ``legacy``: answer with
    ``function_call`` instead of ``tool_calls``.
    """

    schema: dict[str, Any] | None = None
    param: str = "response_format"
    tool_mode: Literal["forced", "auto"] | None = None
    tools: list[dict[str, Any]] | None = None
    legacy: bool = False


def _format_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return dict(_ANY_OBJECT)
    if response_format.json_schema is None:
        raise InvalidRequestError(
            "response_format of type json_schema needs a json_schema object",
            param="response_format.json_schema",
        )
    schema = response_format.json_schema.schema_
    return dict(schema) if schema is not None else dict(_ANY_OBJECT)


def output_request(
    *,
    response_format: ResponseFormat | None,
    tools: list[Tool] | None = None,
    tool_choice: ToolChoice | None = None,
    parallel_tool_calls: bool | None = None,
    functions: list[FunctionDefinition] | None = None,
    function_call: LegacyFunctionCall | None = None,
) -> OutputRequest:
    """Check the structured-output and tool fields together and reduce them to one request.

    Raises:
        InvalidRequestError: the fields contradict each other; ``param`` names the field.
    """
    schema = _format_schema(response_format)
    legacy = functions is not None or function_call is not None
    if legacy and (tools is not None or tool_choice is not None):
        raise InvalidRequestError(
            "use either tools/tool_choice or the legacy functions/function_call, not both",
            param="functions" if functions is not None else "function_call",
        )
    if legacy:
        defined = functions
        choice: ToolChoice | None = (
            NamedToolChoice(type="function", function=function_call)
            if isinstance(function_call, FunctionName)
            else function_call
        )
        tools_param, choice_param = "functions", "function_call"
        # The legacy API makes at most one call per reply.
        parallel = False
    else:
        defined = [tool.function for tool in tools] if tools is not None else None
        choice = tool_choice
        tools_param, choice_param = "tools", "tool_choice"
        parallel = parallel_tool_calls is not False
    if defined is not None and not defined:
        raise InvalidRequestError(f"{tools_param} must not be empty", param=tools_param)
    names = [f.name for f in defined or ()]
    if len(set(names)) != len(names):
        raise InvalidRequestError(f"{tools_param} has duplicate function names", param=tools_param)
    mode = choice if isinstance(choice, str) else ("named" if choice is not None else None)
    if not defined:
        if mode in ("required", "named"):
            raise InvalidRequestError(
                f"{choice_param} needs {tools_param} to choose from", param=choice_param
            )
        return OutputRequest(schema=schema)
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise InvalidRequestError(
            f"{choice_param} names {choice.function.name!r}, which is not in {tools_param}",
            param=choice_param,
        )
    rendered = [{"type": "function", "function": f.model_dump(exclude_none=True)} for f in defined]
    if mode == "none":
        return OutputRequest(schema=schema, tools=rendered, legacy=legacy)
    if schema is not None:
        raise InvalidRequestError(
            f"response_format cannot be combined with {tools_param} unless {choice_param} is "
            "'none': both would constrain the same output",
            param="response_format",
        )
    if mode in (None, "auto"):
        return OutputRequest(tool_mode="auto", tools=rendered, legacy=legacy)
    chosen = [
        (f.name, f.parameters)
        for f in defined
        if not isinstance(choice, NamedToolChoice) or f.name == choice.function.name
    ]
    return OutputRequest(
        schema=forced_call_schema(chosen, parallel=parallel and mode == "required"),
        param=tools_param,
        tool_mode="forced",
        tools=rendered,
        legacy=legacy,
    )
