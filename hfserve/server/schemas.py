"""Request bodies of the OpenAI-compatible API, validated with pydantic.

Unknown fields are accepted and ignored. Every field OpenAI defines is implemented, refused
with a 400 that names it, or on a short ignore list: ``hfserve.server.openai_fields`` holds
that table; declared fields refuse unsupported values in ``check_unsupported``, undeclared
refused ones are caught by :func:`~hfserve.server.openai_fields.refuse_unimplemented`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from hfserve.errors import InvalidRequestError
from hfserve.server.openai_fields import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    EMBEDDING_FIELDS,
    FieldStatus,
    refuse_unimplemented,
)

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "ClassificationRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "parse_body",
]

_Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
_TopP = Annotated[float, Field(gt=0.0, le=1.0)]
_MaxTokens = Annotated[int, Field(ge=1)]
Stop = StrictStr | list[StrictStr] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=False)

    def check_unsupported(self) -> None:
        """Refuse OpenAI parameters that hfserve does not implement (400 naming the field)."""


class StreamOptions(BaseModel):
    """``stream_options`` of a streamed request."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class TextPart(BaseModel):
    """One text part of a multi-part message content."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    def text(self) -> str:
        """The message text (parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Sampling(_Body):
    """Parameters shared by chat and completions."""

    model: StrictStr = Field(min_length=1)
    max_tokens: _MaxTokens | None = None
    temperature: _Temperature | None = None
    top_p: _TopP | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: StrictInt | None = None
    user: StrictStr | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, float] | None = None
    # hfserve extensions (as vLLM/TGI accept them): force output lengths for benchmarks.
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(item == "" for item in items):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        """Stop sequences as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def check_unsupported(self) -> None:
        """Refuse penalties, logit bias and n > 1 when streaming is not possible."""
        if self.presence_penalty:
            raise InvalidRequestError(
                "presence_penalty is not supported by hfserve; omit it or send 0",
                param="presence_penalty",
            )
        if self.frequency_penalty:
            raise InvalidRequestError(
                "frequency_penalty is not supported by hfserve; omit it or send 0",
                param="frequency_penalty",
            )
        if self.logit_bias:
            raise InvalidRequestError("logit_bias is not supported by hfserve", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        if self.min_tokens and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidRequestError("min_tokens must not exceed max_tokens", param="min_tokens")


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: _MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def max_new_tokens(self) -> int | None:
        """``max_completion_tokens`` wins over the legacy ``max_tokens``."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    def check_unsupported(self) -> None:
        """Refuse logprobs, tools and structured output, which hfserve does not implement."""
        super().check_unsupported()
        if self.logprobs or self.top_logprobs:
            raise InvalidRequestError("logprobs are not supported by hfserve", param="logprobs")
        if self.tools:
            raise InvalidRequestError(
                "tools/function calling is not supported by hfserve", param="tools"
            )
        if self.tool_choice not in (None, "none", "auto"):
            raise InvalidRequestError(
                "tool_choice is not supported by hfserve", param="tool_choice"
            )
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidRequestError(
                "only response_format {'type': 'text'} is supported", param="response_format"
            )
        if (
            self.min_tokens
            and self.max_completion_tokens is not None
            and self.min_tokens > self.max_completion_tokens
        ):
            raise InvalidRequestError(
                "min_tokens must not exceed max_completion_tokens", param="min_tokens"
            )


Prompt = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: Prompt
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: StrictStr | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompt(s) as a list: strings or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def check_unsupported(self) -> None:
        """Refuse echo, logprobs, best_of and suffix, which hfserve does not implement."""
        super().check_unsupported()
        if self.echo:
            raise InvalidRequestError("echo is not supported by hfserve", param="echo")
        if self.logprobs:
            raise InvalidRequestError("logprobs are not supported by hfserve", param="logprobs")
        if self.best_of not in (None, 1):
            raise InvalidRequestError("best_of is not supported by hfserve", param="best_of")
        if self.suffix:
            raise InvalidRequestError("suffix is not supported by hfserve", param="suffix")


EmbeddingInput = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: StrictStr = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: StrictStr | None = None

    def inputs(self) -> list[str | list[int]]:
        """The input(s) as a list of strings or token-id lists."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if not value:
            raise InvalidRequestError("input must not be empty", param="input")
        if all(isinstance(x, int) for x in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]

    def check_unsupported(self) -> None:
        """Refuse ``dimensions`` (the model's size is fixed) and empty strings."""
        if self.dimensions is not None:
            raise InvalidRequestError(
                "dimensions is not supported: this model's embedding size is fixed",
                param="dimensions",
            )
        for item in self.inputs():
            if isinstance(item, str) and item == "":
                raise InvalidRequestError("input must not contain empty strings", param="input")
            if isinstance(item, list) and not item:
                raise InvalidRequestError("input must not contain empty token lists", param="input")


class ClassificationRequest(_Body):
    """``POST /v1/classifications`` (hfserve extension): labels and scores per input."""

    model: StrictStr = Field(min_length=1)
    input: StrictStr | list[StrictStr]
    top_k: Annotated[int, Field(ge=1)] | None = None

    def inputs(self) -> list[str]:
        """The input(s) as a list of strings."""
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items:
            raise InvalidRequestError("input must not be empty", param="input")
        if any(item == "" for item in items):
            raise InvalidRequestError("input must not contain empty strings", param="input")
        return items


T = TypeVar("T", bound=_Body)


def _param_path(loc: tuple[int | str, ...]) -> str | None:
    """``messages.0.role`` from a pydantic error location, without union member tags.

    For a field that accepts several types pydantic appends the member it tried
    (``prompt.str``, ``input.list[int]``); the client only needs the field's path.
    """
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part):
            break
        parts.append(str(part))
    return ".".join(parts) or None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "TextPart"})


def parse_body(schema: type[T], data: Any) -> T:
    """Validate a decoded JSON body into ``schema``.

    Raises:
        InvalidRequestError: with ``param`` naming the first offending field.
    """
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    try:
        body = schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = _param_path(first["loc"])
        raise InvalidRequestError(
            f"invalid value for {param or 'body'}: {first['msg']}", param=param
        ) from None
    fields = _OPENAI_FIELDS.get(schema)
    if fields is not None and body.model_extra:
        refuse_unimplemented(fields, body.model_extra, type(body).model_fields)
    body.check_unsupported()
    return body


# The OpenAI field table (implemented / refused / ignored) each schema answers to.
_OPENAI_FIELDS: dict[type[_Body], Mapping[str, FieldStatus]] = {
    ChatCompletionRequest: CHAT_FIELDS,
    CompletionRequest: COMPLETION_FIELDS,
    EmbeddingRequest: EMBEDDING_FIELDS,
}
