"""Request bodies of the OpenAI-compatible API, validated with pydantic.

Unknown fields are accepted and ignored. Every field OpenAI defines is implemented, refused
with a 400 that names it, or on a short ignore list: ``hfserve.server.openai_fields`` holds
that table; declared fields refuse unsupported values in ``check_unsupported``, undeclared
refused ones are caught by :func:`~hfserve.server.openai_fields.refuse_unimplemented`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
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
from hfserve.server.structured import (
    FunctionDefinition,
    LegacyFunctionCall,
    OutputRequest,
    ResponseFormat,
    Tool,
    ToolChoice,
    output_request,
)

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "ClassificationRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "ImagePart",
    "RerankRequest",
    "ScoreRequest",
    "TranscriptionRequest",
    "parse_body",
]

_Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
_TopP = Annotated[float, Field(gt=0.0, le=1.0)]
_MaxTokens = Annotated[int, Field(ge=1)]
_Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# As OpenAI: at most this many logit_bias entries, each in [-100, 100].
_LOGIT_BIAS_MAX = 300
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


class CalledFunction(BaseModel):
    """The function of an assistant's earlier tool call: its name and JSON arguments."""

    model_config = ConfigDict(extra="allow")
    name: StrictStr
    arguments: StrictStr


class AssistantToolCall(BaseModel):
    """One tool call an assistant message made earlier in the conversation."""

    model_config = ConfigDict(extra="allow")
    id: StrictStr
    type: Literal["function"] = "function"
    function: CalledFunction

    def to_template(self) -> dict[str, Any]:
        """The call as chat templates expect it: arguments as an object where they parse."""
        try:
            arguments: Any = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.function.name, "arguments": arguments},
        }


class ImageURL(BaseModel):
    """``image_url`` of an image part: a ``data:`` URL, or ``http(s)`` with remote media on.

    ``detail`` is accepted for compatibility; the model's image processor sets the resolution.
    """

    model_config = ConfigDict(extra="allow")
    url: StrictStr = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(BaseModel):
    """One image part of a multi-part message content (image-text-to-text models)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[AssistantToolCall] | None = None
    tool_call_id: StrictStr | None = None
    # Legacy: an assistant's earlier function call.
    function_call: CalledFunction | None = None

    def text(self) -> str:
        """The message text (text parts joined; image parts are read by ``server.media``)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def to_template(self) -> dict[str, Any]:
        """The message as the chat template reads it (legacy function roles mapped to tools)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        calls = [call.to_template() for call in self.tool_calls or ()]
        if self.function_call is not None:
            legacy = AssistantToolCall(id="call_legacy", function=self.function_call)
            calls.append(legacy.to_template())
        if calls:
            message["tool_calls"] = calls
        if self.role == "function":
            message["role"] = "tool"
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            message["name"] = self.name
        return message


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
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    logit_bias: dict[str, float] | None = None
    # hfserve extensions (as vLLM/TGI accept them): force output lengths for benchmarks.
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    # hfserve extensions (vLLM's names and meanings): -1 or 0 turns top_k off, 0 turns min_p
    # off, 1 turns repetition_penalty (transformers' multiplicative one) off.
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        if len(value) > _LOGIT_BIAS_MAX:
            raise ValueError(f"at most {_LOGIT_BIAS_MAX} tokens may be biased")
        for key, bias in value.items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids (non-negative integers), got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"values must be in [-100, 100], got {bias} for token {key}")
        return value

    def token_bias(self) -> dict[int, float]:
        """``logit_bias`` with integer token ids."""
        return {int(k): float(v) for k, v in (self.logit_bias or {}).items()}

    def logprobs_count(self) -> int | None:
        """How many top logprobs per token were asked for (None: no logprobs at all)."""
        return None

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
        """Refuse combinations that make no sense (stream_options without stream, ...)."""
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
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[FunctionDefinition] | None = None
    function_call: LegacyFunctionCall | None = None

    def output(self) -> OutputRequest:
        """What ``response_format`` and the tool fields ask of the output.

        Raises:
            InvalidRequestError: they contradict each other.
        """
        return output_request(
            response_format=self.response_format,
            tools=self.tools,
            tool_choice=self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls,
            functions=self.functions,
            function_call=self.function_call,
        )

    def max_new_tokens(self) -> int | None:
        """``max_completion_tokens`` wins over the legacy ``max_tokens``."""
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )

    def logprobs_count(self) -> int | None:
        """``top_logprobs`` when ``logprobs`` is true; None when logprobs are off."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def check_unsupported(self) -> None:
        """Refuse top_logprobs without logprobs, and contradicting tool fields."""
        super().check_unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        self.output()
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
    # OpenAI's legacy completions allow up to 5.
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    response_format: ResponseFormat | None = None
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

    def logprobs_count(self) -> int | None:
        """``logprobs``: the top alternatives per token (0: the chosen token's only)."""
        return self.logprobs

    def check_unsupported(self) -> None:
        """Refuse echo, best_of and suffix, which hfserve does not implement."""
        super().check_unsupported()
        if self.echo:
            raise InvalidRequestError("echo is not supported by hfserve", param="echo")
        if self.best_of not in (None, 1):
            raise InvalidRequestError("best_of is not supported by hfserve", param="best_of")
        if self.suffix:
            raise InvalidRequestError("suffix is not supported by hfserve", param="suffix")

    def output(self) -> OutputRequest:
        """What ``response_format`` asks of the output."""
        return output_request(response_format=self.response_format)


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


class RerankRequest(_Body):
    """``POST /v1/rerank``: the shape vLLM, TEI, Jina and Cohere share."""

    model: StrictStr = Field(min_length=1)
    query: StrictStr = Field(min_length=1)
    documents: list[StrictStr]
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = True

    def check_unsupported(self) -> None:
        """Refuse an empty document list (400 naming ``documents``)."""
        if not self.documents:
            raise InvalidRequestError("documents must not be empty", param="documents")


class ScoreRequest(_Body):
    """``POST /v1/score`` (as vLLM): ``text_1`` against each ``text_2``.

    One ``text_1`` is paired with every ``text_2``; two lists of equal length pair up in order.
    """

    model: StrictStr = Field(min_length=1)
    text_1: StrictStr | list[StrictStr]
    text_2: StrictStr | list[StrictStr]

    def pairs(self) -> list[tuple[str, str]]:
        """The (text_1, text_2) pairs to score, in order.

        Raises:
            InvalidRequestError: an empty list, or two lists of different lengths.
        """
        first = [self.text_1] if isinstance(self.text_1, str) else list(self.text_1)
        second = [self.text_2] if isinstance(self.text_2, str) else list(self.text_2)
        if not first:
            raise InvalidRequestError("text_1 must not be empty", param="text_1")
        if not second:
            raise InvalidRequestError("text_2 must not be empty", param="text_2")
        if len(first) == 1:
            return [(first[0], text) for text in second]
        if len(first) != len(second):
            raise InvalidRequestError(
                f"text_1 has {len(first)} texts and text_2 {len(second)}: send one text_1, "
                "or lists of the same length",
                param="text_2",
            )
        return list(zip(first, second, strict=True))


class TranscriptionRequest(_Body):
    """The form fields of ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``
    (``file`` travels as the multipart file part)."""

    model: StrictStr = Field(min_length=1)
    file: bytes = Field(description="The audio file (wav, flac, mp3, ogg, m4a, webm, ...).")
    language: StrictStr | None = Field(None, min_length=1)
    prompt: StrictStr | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=list)
    stream: bool = False
    include: list[StrictStr] = Field(default_factory=list)

    def check_unsupported(self) -> None:
        """Refuse word timestamps, streaming and ``include``, which hfserve does not implement."""
        if "word" in self.timestamp_granularities:
            raise InvalidRequestError(
                "word timestamps are not supported; use timestamp_granularities[]=segment",
                param="timestamp_granularities",
            )
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise InvalidRequestError(
                "timestamp_granularities needs response_format verbose_json",
                param="timestamp_granularities",
            )
        if self.stream:
            raise InvalidRequestError("streaming transcriptions is not supported", param="stream")
        if self.include:
            raise InvalidRequestError("include is not supported by hfserve", param="include")


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


_TYPE_TAGS = frozenset(
    {"str", "int", "float", "bool", "list", "dict", "none", "TextPart", "NamedToolChoice"}
)


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
        # The deepest error is the most specific: for a union (message content: a string or a
        # list of parts) it is the one inside the member that came closest, not "not a string".
        errors = exc.errors(include_url=False)
        first = max(errors, key=lambda error: len(error["loc"]))
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
