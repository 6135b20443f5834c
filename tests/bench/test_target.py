"""The bench drives a model that serves its endpoint, or the endpoint that fits the model."""

from __future__ import annotations

import httpx
import pytest

from hfserve.bench.client import BenchClient
from hfserve.bench.config import BenchConfig, Endpoint
from hfserve.bench.target import ListedModel, choose_target
from hfserve.errors import ConfigError

URL = "http://fake"
EMBED = ListedModel("all-minilm-l6-v2", "embeddings")
CHAT = ListedModel("demo-chat", "text-generation")
CLS = ListedModel("sentiment", "text-classification")
PEER = ListedModel("vllm-model")


def _auto(**values: object) -> BenchConfig:
    return BenchConfig(url=URL, auto_endpoint=True, **values)  # type: ignore[arg-type]


def test_the_first_model_that_serves_the_endpoint_is_chosen() -> None:
    # The README tour's server lists the embedding model first.
    config, model = choose_target(_auto(), [EMBED, CHAT])
    assert (config.endpoint, model) == (Endpoint.CHAT, "demo-chat")
    config, model = choose_target(BenchConfig(url=URL, endpoint=Endpoint.EMBEDDINGS), [CHAT, EMBED])
    assert (config.endpoint, model) == (Endpoint.EMBEDDINGS, "all-minilm-l6-v2")


def test_without_an_endpoint_the_endpoint_fits_the_model() -> None:
    config, model = choose_target(_auto(), [CLS, EMBED])
    assert (config.endpoint, model) == (Endpoint.EMBEDDINGS, "all-minilm-l6-v2")
    config, model = choose_target(_auto(model="all-minilm-l6-v2"), [CHAT, EMBED])
    assert (config.endpoint, model) == (Endpoint.EMBEDDINGS, "all-minilm-l6-v2")
    assert config.streaming is False


def test_nothing_fits_says_which_models_serve_what() -> None:
    with pytest.raises(ConfigError) as info:
        choose_target(BenchConfig(url=URL), [EMBED, CLS])
    assert info.value.message == (
        "no model at http://fake serves chat: all-minilm-l6-v2 (embeddings); "
        "sentiment (text-classification: no bench endpoint)"
    )
    assert info.value.param == "endpoint"
    with pytest.raises(ConfigError, match="no model at http://fake serves chat: sentiment"):
        choose_target(_auto(), [CLS])


def test_a_named_model_that_cannot_serve_the_named_endpoint_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        choose_target(BenchConfig(url=URL, model="all-minilm-l6-v2"), [EMBED, CHAT])
    assert info.value.message == (
        "model all-minilm-l6-v2 (embeddings) does not serve chat; pass --endpoint or another "
        "--model (all-minilm-l6-v2 (embeddings); demo-chat (chat, completions))"
    )
    with pytest.raises(ConfigError, match=r"sentiment \(text-classification: no bench endpoint\)"):
        choose_target(_auto(model="sentiment"), [CLS])


def test_models_without_a_task_are_taken_at_their_word() -> None:
    with pytest.raises(ConfigError, match=r"\(all-minilm-l6-v2 \(embeddings\); vllm-model\)$"):
        choose_target(BenchConfig(url=URL, model="all-minilm-l6-v2"), [EMBED, PEER])
    assert choose_target(BenchConfig(url=URL), [PEER]) == (BenchConfig(url=URL), "vllm-model")
    config = BenchConfig(url=URL, model="unlisted", endpoint=Endpoint.COMPLETIONS)
    assert choose_target(config, [EMBED]) == (config, "unlisted")
    assert choose_target(BenchConfig(url=URL), []) == (BenchConfig(url=URL), None)


async def test_listed_models_carry_hfserve_tasks() -> None:
    body = {
        "data": [
            {"id": "e", "task": "embeddings"},
            {"id": "p"},
            {"id": "n", "task": None},
        ]
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    async with BenchClient(BenchConfig(url=URL), transport=transport) as client:
        assert await client.listed_models() == [
            ListedModel("e", "embeddings"),
            ListedModel("p"),
            ListedModel("n"),
        ]
    odd = httpx.MockTransport(lambda request: httpx.Response(200, json={"data": ["x"]}))
    async with BenchClient(BenchConfig(url=URL), transport=odd) as client:
        assert await client.listed_models() == []
