"""The grammar compiler: llguidance grammars from JSON schemas, validated, cached, bounded."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from hfserve.errors import InvalidRequestError
from hfserve.skills.generation.grammar import GrammarCompiler, schema_key
from tests.fixtures.tiny_models import TinyModels

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
    "required": ["ok", "color"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def ll_tokenizer(tiny_models: TinyModels) -> Any:
    import llguidance.hf
    from transformers import AutoTokenizer

    return llguidance.hf.from_tokenizer(AutoTokenizer.from_pretrained(tiny_models.llama))


def _allowed(matcher: Any, vocab: int) -> list[int]:
    mask = matcher.compute_bitmask()
    return [t for t in range(vocab) if mask[t // 8] >> (t % 8) & 1]


def _walk(matcher: Any, tokenizer: Any, pick: int) -> str:
    """Follow the grammar, taking the ``pick``-th allowed token each step, until it stops."""
    out: list[int] = []
    while not matcher.is_stopped():
        allowed = _allowed(matcher, tokenizer.vocab_size)
        token = allowed[pick % len(allowed)]
        if token == tokenizer.eos_token:
            break
        assert matcher.consume_token(token), matcher.get_error()
        out.append(token)
    return tokenizer.decode_str(out)


def test_schema_key_is_compact_and_keeps_order() -> None:
    assert schema_key({"b": 1, "a": [1, 2]}) == '{"b":1,"a":[1,2]}'
    assert schema_key({"a": 1, "b": 1}) != schema_key({"b": 1, "a": 1})


async def test_a_schema_compiles_into_compact_json_matchers(ll_tokenizer: Any) -> None:
    compiler = GrammarCompiler(lambda: ll_tokenizer)
    grammar = await compiler.compile(SCHEMA, param="response_format")
    for pick in (0, 1, 7):
        text = _walk(grammar.matcher(), ll_tokenizer, pick)
        value = json.loads(text)
        assert set(value) == {"ok", "color"} and value["color"] in {"red", "green"}
        assert " " not in text and "\n" not in text
    assert grammar.matcher() is not grammar.matcher()


async def test_compiled_grammars_are_cached_and_evicted_lru(ll_tokenizer: Any) -> None:
    calls: list[int] = []

    def tokenizer() -> Any:
        calls.append(1)
        return ll_tokenizer

    compiler = GrammarCompiler(tokenizer, max_entries=2)
    first = await compiler.compile(SCHEMA, param="response_format")
    assert await compiler.compile(dict(SCHEMA), param="response_format") is first
    await compiler.compile({"type": "boolean"}, param="response_format")
    await compiler.compile(SCHEMA, param="response_format")  # most recent again
    await compiler.compile({"type": "integer"}, param="response_format")  # evicts boolean
    assert len(compiler) == 2 and len(calls) == 3
    await compiler.compile(SCHEMA, param="response_format")
    assert len(calls) == 3
    await compiler.compile({"type": "boolean"}, param="response_format")
    assert len(calls) == 4


async def test_concurrent_requests_share_one_compile(ll_tokenizer: Any) -> None:
    calls: list[int] = []
    compiler = GrammarCompiler(lambda: calls.append(1) or ll_tokenizer)
    results = await asyncio.gather(
        *(compiler.compile(SCHEMA, param="response_format") for _ in range(5))
    )
    assert len(calls) == 1 and all(r is results[0] for r in results)


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "objectx"}, "unsupported JSON schema"),
        ({"type": "string", "format": "no-such-format"}, "unsupported JSON schema"),
        ({"$ref": "#/$defs/missing"}, "unsupported JSON schema"),
    ],
)
async def test_bad_schemas_are_400_naming_the_field(
    ll_tokenizer: Any, schema: dict[str, Any], reason: str
) -> None:
    compiler = GrammarCompiler(lambda: ll_tokenizer)
    with pytest.raises(InvalidRequestError) as info:
        await compiler.compile(schema, param="tools")
    assert info.value.param == "tools" and reason in info.value.message
    assert len(compiler) == 0


async def test_a_schema_llguidance_cannot_read_is_400(ll_tokenizer: Any) -> None:
    compiler = GrammarCompiler(lambda: ll_tokenizer)
    with pytest.raises(InvalidRequestError) as info:
        await compiler.compile({"maximum": 10**400}, param="response_format")
    assert info.value.param == "response_format"


async def test_a_compile_past_the_timeout_is_400_and_not_a_hang(ll_tokenizer: Any) -> None:
    release = threading.Event()

    def slow_tokenizer() -> Any:
        release.wait(30)
        return ll_tokenizer

    compiler = GrammarCompiler(slow_tokenizer, timeout=0.05)
    try:
        with pytest.raises(InvalidRequestError) as info:
            await compiler.compile(SCHEMA, param="response_format")
        assert "longer than" in info.value.message and info.value.param == "response_format"
    finally:
        release.set()


async def test_a_cancelled_waiter_does_not_cancel_the_shared_compile(ll_tokenizer: Any) -> None:
    release = threading.Event()
    compiler = GrammarCompiler(lambda: release.wait(30) and ll_tokenizer)
    first = asyncio.ensure_future(compiler.compile(SCHEMA, param="response_format"))
    second = asyncio.ensure_future(compiler.compile(SCHEMA, param="response_format"))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert (await second).matcher() is not None
    with pytest.raises(asyncio.CancelledError):
        await first
