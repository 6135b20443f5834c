"""Every field of the installed openai SDK's request types is implemented, refused or ignored.

The SDK's own TypedDicts are the list of what OpenAI clients can send: when a new SDK release
adds a field, the table in ``hfserve.server.openai_fields`` no longer matches and this fails,
instead of the field being silently ignored.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from openai.types import EmbeddingCreateParams
from openai.types import completion_create_params as legacy
from openai.types.chat import completion_create_params as chat

from hfserve.errors import InvalidRequestError
from hfserve.server.openai_fields import (
    IGNORED_FIELDS,
    OPENAI_FIELDS,
    refuse_unimplemented,
)
from hfserve.server.schemas import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_body,
)

ROOT = Path(__file__).resolve().parents[2]
SDK_TYPES: dict[str, tuple[Any, ...]] = {
    "/v1/chat/completions": (
        chat.CompletionCreateParamsStreaming,
        chat.CompletionCreateParamsNonStreaming,
    ),
    "/v1/completions": (
        legacy.CompletionCreateParamsStreaming,
        legacy.CompletionCreateParamsNonStreaming,
    ),
    "/v1/embeddings": (EmbeddingCreateParams,),
}
MSG = [{"role": "user", "content": "hi"}]


def sdk_fields(endpoint: str) -> set[str]:
    """Every field of the endpoint's request TypedDicts, inherited ones included."""
    fields: set[str] = set()
    for typed_dict in SDK_TYPES[endpoint]:
        fields |= set(typing.get_type_hints(typed_dict))
        for base in typed_dict.__mro__:
            fields |= set(getattr(base, "__annotations__", {}))
    return fields


@pytest.mark.parametrize("endpoint", sorted(SDK_TYPES))
def test_every_sdk_field_is_classified_and_nothing_else(endpoint: str) -> None:
    table = set(OPENAI_FIELDS[endpoint])
    sdk = sdk_fields(endpoint)
    assert sdk - table == set(), (
        f"the openai SDK sends {sorted(sdk - table)} to {endpoint}: implement each, refuse it "
        "(400 naming it) or add it to the ignore list, in hfserve/server/openai_fields.py"
    )
    assert table - sdk == set(), f"no longer in the SDK: {sorted(table - sdk)}"


def test_the_ignore_list_is_short_and_documented() -> None:
    ignored = {f for table in OPENAI_FIELDS.values() for f, s in table.items() if s == "ignored"}
    assert ignored == IGNORED_FIELDS
    assert len(IGNORED_FIELDS) <= 6


def render_docs_table() -> str:
    """The field table docs/api.md must carry, built from the code's table."""
    endpoints = list(OPENAI_FIELDS)
    names = sorted({name for table in OPENAI_FIELDS.values() for name in table})
    lines = [
        "| Field | " + " | ".join(f"`{e}`" for e in endpoints) + " |",
        "| --- |" + " --- |" * len(endpoints),
    ]
    for name in names:
        cells = [OPENAI_FIELDS[e].get(name, "—") for e in endpoints]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_api_md_carries_the_field_table() -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert render_docs_table() in page, "update docs/api.md's field table:\n" + render_docs_table()
    for name in sorted(IGNORED_FIELDS):
        assert f"`{name}`" in page


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("modalities", ["audio"]),
        ("moderation", {"input": {"mode": "block"}}),
        ("prediction", {"type": "content", "content": "hello"}),
        ("prompt_cache_options", {"ttl": "1h"}),
        ("prompt_cache_retention", "24h"),
        ("reasoning_effort", "low"),
        ("reasoning_effort", "none"),
        ("verbosity", "low"),
        ("web_search_options", {}),
    ],
)
def test_refused_chat_fields_name_themselves(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(ChatCompletionRequest, {"model": "m", "messages": MSG, field: value})
    assert info.value.param == field
    assert field in info.value.message


@pytest.mark.parametrize(
    "extra",
    [
        {"modalities": ["text"]},
        {"audio": None, "reasoning_effort": None, "web_search_options": None},
        {"store": True, "metadata": {"k": "v"}, "service_tier": "auto"},
        {"safety_identifier": "u1", "prompt_cache_key": "k", "user": "u"},
        {"an_unknown_vendor_field": 1},
    ],
)
def test_neutral_and_ignored_values_are_accepted(extra: dict[str, Any]) -> None:
    body = parse_body(ChatCompletionRequest, {"model": "m", "messages": MSG} | extra)
    assert body.model == "m"


def test_other_endpoints_refuse_only_their_own_fields() -> None:
    # A chat-only field sent to completions or classifications is an unknown field there.
    parse_body(CompletionRequest, {"model": "m", "prompt": "hi", "audio": {"voice": "alloy"}})
    parse_body(ClassificationRequest, {"model": "m", "input": "hi", "reasoning_effort": "low"})
    with pytest.raises(InvalidRequestError) as info:
        parse_body(EmbeddingRequest, {"model": "m", "input": "hi", "dimensions": 8})
    assert info.value.param == "dimensions"


def test_declared_fields_are_left_to_their_schema() -> None:
    # ``echo`` is declared by CompletionRequest, which refuses it with its own message.
    refuse_unimplemented(OPENAI_FIELDS["/v1/completions"], {"echo": True}, {"echo": None})
    with pytest.raises(InvalidRequestError, match="echo is not supported") as info:
        parse_body(CompletionRequest, {"model": "m", "prompt": "hi", "echo": True})
    assert info.value.param == "echo"
