"""run_benchmark against a real uvicorn server on loopback: real sockets and SSE framing."""

from __future__ import annotations

import pytest

from hfserve.bench.config import BenchConfig, Endpoint
from hfserve.bench.runner import run_benchmark
from hfserve.errors import UnavailableError
from tests.bench.fake_openai import MODEL, FakeServer, refused_url


@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS])
async def test_streaming_generation(fake_server: FakeServer, endpoint: Endpoint) -> None:
    fake_server.behaviour.tokens = 5
    config = BenchConfig(url=fake_server.url + "/v1", endpoint=endpoint, requests=6, concurrency=3)
    result = await run_benchmark(config)
    metrics = result.metrics
    assert result.model == MODEL and metrics.completed == 6 and metrics.failed == 0
    assert metrics.total_output_tokens == 30 and metrics.total_input_tokens == 30
    assert all(
        body["stream_options"] == {"include_usage": True} for body in fake_server.behaviour.seen
    )
    for record in result.records:
        assert record.ttft is not None and 0 <= record.ttft <= record.latency
        assert len(record.itl) == 4
    assert metrics.itl is not None and metrics.itl.count == 24
    assert metrics.tpot is not None and metrics.tpot.count == 6


async def test_streaming_without_usage_counts_chunks(fake_server: FakeServer) -> None:
    fake_server.behaviour.tokens = 3
    config = BenchConfig(url=fake_server.url, requests=2, extra_body={"stream_options": None})
    result = await run_benchmark(config)
    assert [r.output_tokens for r in result.records] == [3, 3]
    assert [r.input_tokens for r in result.records] == [32, 32]  # the prompt's word count


async def test_non_streaming_chat_and_api_key(fake_server: FakeServer) -> None:
    config = BenchConfig(url=fake_server.url, requests=3, stream=False, api_key="sk-test")
    result = await run_benchmark(config)
    assert result.metrics.completed == 3
    assert result.metrics.ttft is None and result.metrics.itl is None
    assert result.metrics.total_output_tokens == 12
    assert fake_server.behaviour.auth == ["Bearer sk-test"] * 3


async def test_embeddings(fake_server: FakeServer) -> None:
    config = BenchConfig(
        url=fake_server.url, endpoint=Endpoint.EMBEDDINGS, requests=4, concurrency=2
    )
    result = await run_benchmark(config)
    assert result.metrics.completed == 4
    assert result.metrics.total_input_tokens == 20 and result.metrics.total_output_tokens == 0
    assert all("input" in body for body in fake_server.behaviour.seen)


async def test_overload_statuses_are_counted_separately(fake_server: FakeServer) -> None:
    fake_server.behaviour.statuses = [200, 429, 503, 200, 503]
    result = await run_benchmark(BenchConfig(url=fake_server.url, requests=10))
    assert result.metrics.completed == 4
    assert result.metrics.failures == {"HTTP 429": 2, "HTTP 503": 4}
    assert {r.message for r in result.records if not r.ok} == {"fake 429", "fake 503"}


async def test_seeded_open_loop_on_a_real_clock(fake_server: FakeServer) -> None:
    config = BenchConfig(url=fake_server.url, rate=500.0, requests=8, seed=7)
    first = await run_benchmark(config)
    prompts = [body["messages"][0]["content"] for body in fake_server.behaviour.seen]
    fake_server.reset()
    await run_benchmark(config)
    assert sorted(prompts) == sorted(
        b["messages"][0]["content"] for b in fake_server.behaviour.seen
    )
    assert first.metrics.completed == 8


async def test_connection_refused_is_unavailable() -> None:
    with pytest.raises(UnavailableError, match="cannot reach"):
        await run_benchmark(BenchConfig(url=refused_url(), requests=1))
