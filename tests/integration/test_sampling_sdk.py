"""Logprobs, penalties, logit bias and seeds through the official ``openai`` SDK on a real server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from transformers import AutoTokenizer

from tests.fixtures.tiny_models import TinyModels
from tests.integration.conftest import StartServer
from tests.integration.test_openai_sdk import sdk
from tests.server.conftest import model_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MESSAGES: Any = [{"role": "user", "content": "hello there"}]


def test_logprobs_penalties_bias_and_seeds(
    start_server: StartServer, tiny_models: TinyModels
) -> None:
    server = start_server(models=[*model_args(tiny_models), f"tiny-gpt2={tiny_models.gpt2}"])
    client = sdk(server.url)
    greedy: dict[str, Any] = {"temperature": 0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}

    # Chat logprobs: one entry per completion token, each <= 0, greedy picks the top one.
    chat = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, logprobs=True, top_logprobs=3, **greedy
    )
    choice = chat.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert chat.usage is not None and len(content) == chat.usage.completion_tokens == 8
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.bytes is not None
        if "\ufffd" not in entry.token:  # else a piece of a character: its own bytes
            assert bytes(entry.bytes) == entry.token.encode()

    # Streamed equals non-streamed.
    stream = client.chat.completions.create(
        model="tiny-llama", messages=MESSAGES, logprobs=True, top_logprobs=3, stream=True, **greedy
    )
    streamed = [
        entry
        for chunk in stream
        for c in chunk.choices
        if c.logprobs is not None and c.logprobs.content
        for entry in c.logprobs.content
    ]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)

    # Legacy completions logprobs, streamed and not.
    legacy = client.completions.create(model="tiny-llama", prompt="the quick", logprobs=2, **greedy)
    lp = legacy.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.top_logprobs is not None and lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 8
    assert all(x <= 0 for x in lp.token_logprobs)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for token, top in zip(lp.tokens, lp.top_logprobs, strict=True):
        assert max(top, key=top.__getitem__) == token and len(top) <= 3
    pieces = client.completions.create(
        model="tiny-llama", prompt="the quick", logprobs=2, stream=True, **greedy
    )
    tokens = [
        t for c in pieces for ch in c.choices if ch.logprobs for t in ch.logprobs.tokens or []
    ]
    assert tokens == lp.tokens

    # Penalties change the output measurably (the tiny GPT-2 repeats itself without them).
    def distinct(**extra: Any) -> int:
        out = client.completions.create(
            model="tiny-gpt2",
            prompt="hello world",
            logprobs=0,
            **greedy | {"max_tokens": 16} | extra,
        )
        assert out.choices[0].logprobs is not None
        return len(set(out.choices[0].logprobs.tokens or []))

    plain = distinct()
    assert distinct(frequency_penalty=1.5) > plain
    assert distinct(presence_penalty=1.5) > plain
    assert distinct(extra_body={"ignore_eos": True, "repetition_penalty": 1.5}) > plain

    # logit_bias +100 forces a token; an id outside the vocabulary is a 400 naming logit_bias.
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.gpt2)
    forced = client.completions.create(
        model="tiny-gpt2",
        prompt="hello",
        max_tokens=4,
        temperature=1.0,
        logit_bias={"77": 100},
        extra_body={"ignore_eos": True},
    )
    assert forced.choices[0].text == tokenizer.decode([77] * 4)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-gpt2", prompt="x", logit_bias={"999999": 5})
    assert bad.value.body["param"] == "logit_bias"  # type: ignore[index]

    # The same seed gives the same text whatever else shares the batch.
    seeded: dict[str, Any] = {
        "model": "tiny-llama",
        "messages": MESSAGES,
        "max_tokens": 12,
        "seed": 1234,
        "temperature": 1.0,
        "presence_penalty": 0.7,
        "extra_body": {"ignore_eos": True, "top_k": 40, "min_p": 0.02},
    }
    alone = client.chat.completions.create(**seeded).choices[0].message.content
    noise: dict[str, Any] = {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": 10}
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(client.chat.completions.create, **noise, temperature=0.9),
            pool.submit(client.chat.completions.create, **seeded),
            pool.submit(client.chat.completions.create, **noise, temperature=0, seed=5),
            pool.submit(client.chat.completions.create, **noise | {"frequency_penalty": 1}),
        ]
        results = [f.result() for f in futures]
    assert results[1].choices[0].message.content == alone
    assert server.stop() == 0
