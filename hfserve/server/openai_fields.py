"""How hfserve treats every field of OpenAI's request bodies: implemented, refused or ignored.

One table per endpoint, covering every field of the official ``openai`` SDK's request types
(``CompletionCreateParams`` for chat, ``completion_create_params`` for legacy completions,
``EmbeddingCreateParams``). ``tests/server/test_openai_fields.py`` checks the tables against the
installed SDK, so a field that a new SDK release adds fails a test instead of being silently
ignored, and checks docs/api.md's field table against them.

- ``implemented``: the server does what OpenAI documents.
- ``refused``: a value that asks for something is a 400 whose ``param`` names the field; an
  absent field, ``null`` or a neutral value (``modalities: ["text"]``) is accepted.
- ``ignored``: accepted and ignored because it cannot change the answer: identifiers for
  OpenAI's abuse monitoring and prompt cache, storage and billing options of OpenAI's platform.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from hfserve.errors import InvalidRequestError

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "EMBEDDING_FIELDS",
    "IGNORED_FIELDS",
    "OPENAI_FIELDS",
    "FieldStatus",
    "refuse_unimplemented",
]

FieldStatus = Literal["implemented", "refused", "ignored"]

#: Accepted and ignored on every endpoint: they cannot change what the model answers.
#: ``safety_identifier`` and ``prompt_cache_key`` are OpenAI's successors of ``user``.
IGNORED_FIELDS: Final = frozenset(
    {"user", "store", "metadata", "service_tier", "safety_identifier", "prompt_cache_key"}
)

_SAMPLING: Final[dict[str, FieldStatus]] = {
    "model": "implemented",
    "max_tokens": "implemented",
    "n": "implemented",
    "seed": "implemented",
    "stop": "implemented",
    "stream": "implemented",
    "stream_options": "implemented",
    "temperature": "implemented",
    "top_p": "implemented",
    "presence_penalty": "implemented",
    "frequency_penalty": "implemented",
    "logit_bias": "implemented",
    "logprobs": "implemented",
    "user": "ignored",
}

CHAT_FIELDS: Final[dict[str, FieldStatus]] = _SAMPLING | {
    "messages": "implemented",
    "max_completion_tokens": "implemented",
    "top_logprobs": "implemented",
    "response_format": "implemented",
    "tools": "implemented",
    "tool_choice": "implemented",
    "parallel_tool_calls": "implemented",
    "functions": "implemented",
    "function_call": "implemented",
    "audio": "refused",
    "modalities": "refused",
    "moderation": "refused",
    "prediction": "refused",
    "prompt_cache_options": "refused",
    "prompt_cache_retention": "refused",
    "reasoning_effort": "refused",
    "verbosity": "refused",
    "web_search_options": "refused",
    "store": "ignored",
    "metadata": "ignored",
    "service_tier": "ignored",
    "safety_identifier": "ignored",
    "prompt_cache_key": "ignored",
}

COMPLETION_FIELDS: Final[dict[str, FieldStatus]] = _SAMPLING | {
    "prompt": "implemented",
    "best_of": "refused",
    "echo": "refused",
    "suffix": "refused",
}

EMBEDDING_FIELDS: Final[dict[str, FieldStatus]] = {
    "model": "implemented",
    "input": "implemented",
    "encoding_format": "implemented",
    "dimensions": "refused",
    "user": "ignored",
}

#: Every table by the endpoint it describes.
OPENAI_FIELDS: Final[Mapping[str, Mapping[str, FieldStatus]]] = {
    "/v1/chat/completions": CHAT_FIELDS,
    "/v1/completions": COMPLETION_FIELDS,
    "/v1/embeddings": EMBEDDING_FIELDS,
}

# Values of a refused field that ask for nothing beyond what hfserve does.
_NEUTRAL: Final[Mapping[str, tuple[Any, ...]]] = {"modalities": (["text"],)}


def refuse_unimplemented(
    fields: Mapping[str, FieldStatus], given: Mapping[str, Any], declared: Mapping[str, Any]
) -> None:
    """Refuse a refused field that no schema declares (declared ones check themselves).

    Args:
        fields: the endpoint's table. given: the request's undeclared fields (pydantic's
            ``model_extra``). declared: the schema's own fields, which are left alone.

    Raises:
        InvalidRequestError: a refused field asks for something; ``param`` names it.
    """
    for name, value in given.items():
        if fields.get(name) != "refused" or name in declared or value is None:
            continue
        if value in _NEUTRAL.get(name, ()):
            continue
        if name in _NEUTRAL:
            allowed = " or ".join(repr(v) for v in _NEUTRAL[name])
            message = f"{name} {value!r} is not supported by hfserve; send {allowed} or omit it"
        else:
            message = f"{name} is not supported by hfserve; omit it or send null"
        raise InvalidRequestError(message, param=name)
