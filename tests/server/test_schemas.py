"""Request validation: error params name the field, never pydantic's union member tags."""

from __future__ import annotations

from typing import Any

import pytest

from hfserve.errors import InvalidRequestError
from hfserve.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    _Sampling,
    parse_body,
)

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("schema", "body", "param"),
    [
        (CompletionRequest, {"model": "m", "prompt": 5}, "prompt"),
        (CompletionRequest, {"model": "m", "prompt": [[1, "x"]]}, "prompt"),
        (EmbeddingRequest, {"model": "m", "input": {"a": 1}}, "input"),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "user", "content": 5}]},
            "messages.0.content",
        ),
        (ChatCompletionRequest, {"model": "m", "messages": MSG, "stop": 5}, "stop"),
        (ChatCompletionRequest, {"model": "m", "messages": MSG, "seed": "7"}, "seed"),
    ],
)
def test_regression_union_fields_were_reported_with_type_tags(
    schema: Any, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(schema, body)
    assert info.value.param == param


def test_body_must_be_an_object() -> None:
    with pytest.raises(InvalidRequestError, match="JSON object"):
        parse_body(ChatCompletionRequest, [1, 2])


def test_completion_prompt_shapes() -> None:
    assert parse_body(CompletionRequest, {"model": "m", "prompt": [1, 2]}).prompts() == [[1, 2]]
    assert parse_body(CompletionRequest, {"model": "m", "prompt": ["a", "b"]}).prompts() == [
        "a",
        "b",
    ]
    with pytest.raises(InvalidRequestError, match="must not be empty"):
        parse_body(CompletionRequest, {"model": "m", "prompt": []}).prompts()


def test_max_completion_tokens_wins_and_min_tokens_is_bounded() -> None:
    body = parse_body(
        ChatCompletionRequest,
        {"model": "m", "messages": MSG, "max_tokens": 9, "max_completion_tokens": 4},
    )
    assert body.max_new_tokens() == 4
    with pytest.raises(InvalidRequestError) as info:
        parse_body(
            ChatCompletionRequest,
            {"model": "m", "messages": MSG, "max_completion_tokens": 2, "min_tokens": 3},
        )
    assert info.value.param == "min_tokens"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"logit_bias": {"one": 2}}, "logit_bias"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"response_format": {"type": "json"}}, "response_format.type"),
        ({"max_tokens": 2, "min_tokens": 3}, "min_tokens"),
    ],
)
def test_unsupported_chat_parameters_are_named(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(ChatCompletionRequest, {"model": "m", "messages": MSG} | extra)
    assert info.value.param == param


def test_sampling_fields_are_parsed() -> None:
    body = parse_body(
        ChatCompletionRequest,
        {"model": "m", "messages": MSG, "logit_bias": {"7": -100, "12": 5.5}, "logprobs": True},
    )
    assert body.token_bias() == {7: -100.0, 12: 5.5}
    assert body.logprobs_count() == 0
    plain = parse_body(ChatCompletionRequest, {"model": "m", "messages": MSG})
    assert plain.token_bias() == {} and plain.logprobs_count() is None
    legacy = parse_body(CompletionRequest, {"model": "m", "prompt": "p", "logprobs": 3})
    assert legacy.logprobs_count() == 3
    explicit_null = parse_body(
        ChatCompletionRequest, {"model": "m", "messages": MSG, "logit_bias": None}
    )
    assert explicit_null.token_bias() == {}
    # The shared base has no logprobs field of its own.
    assert _Sampling.model_validate({"model": "m"}).logprobs_count() is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"echo": True}, "echo"),
        ({"logprobs": 6}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "x"}, "suffix"),
    ],
)
def test_unsupported_completion_parameters_are_named(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(CompletionRequest, {"model": "m", "prompt": "p"} | extra)
    assert info.value.param == param


def test_text_parts_are_joined() -> None:
    body = parse_body(
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        },
    )
    assert body.messages[0].text() == "ab"
    assert (
        parse_body(ChatCompletionRequest, {"model": "m", "messages": [{"role": "assistant"}]})
        .messages[0]
        .text()
        == ""
    )
