"""BenchClient against a scripted transport on a fake clock: exact timings, every outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from hfserve.bench.client import INVALID_RESPONSE, STREAM_ERROR, BenchClient, iter_sse_data
from hfserve.bench.config import BenchConfig, Endpoint
from hfserve.bench.record import RequestRecord
from hfserve.bench.workload import PreparedRequest, Workload
from hfserve.core.clock import FakeClock
from hfserve.errors import UnavailableError
from tests.bench.fake_openai import Script, ScriptedTransport, sse

URL = "http://fake"


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _collect(lines: AsyncIterator[str]) -> list[str]:
    return [data async for data in iter_sse_data(lines)]


async def test_sse_parser_handles_comments_multiline_and_missing_final_blank() -> None:
    events = await _collect(
        _lines(": keep-alive", "", "event: x", 'data: {"a":', "data:1}", "", "id: 3", "data: last")
    )
    assert events == ['{"a":\n1}', "last"]
    assert await _collect(_lines("data: one", "", "")) == ["one"]


def _client(
    clock: FakeClock, scripted: ScriptedTransport, **kwargs: object
) -> tuple[BenchClient, PreparedRequest]:
    config = BenchConfig(url=URL, **kwargs)  # type: ignore[arg-type]
    client = BenchClient(config, transport=scripted.transport(), clock=clock)
    return client, Workload(config, "fake-model").request(0)


async def test_streamed_chat_times_tokens_not_the_role_chunk() -> None:
    clock = FakeClock(100.0)
    scripted = ScriptedTransport(clock, [Script(first=0.25, gaps=(0.01, 0.02, 0.04))])
    client, request = _client(clock, scripted)
    async with client:
        record = await client.send(request, origin=99.0)
    assert record.ok and record.status == 200
    assert record.start == pytest.approx(1.0)
    assert record.ttft == pytest.approx(0.25)
    assert record.itl == pytest.approx((0.01, 0.02, 0.04))
    assert record.latency == pytest.approx(0.32)
    assert (record.input_tokens, record.output_tokens) == (7, 4)
    assert record.tpot == pytest.approx((0.32 - 0.25) / 3)


async def test_usage_counts_win_over_chunk_counts() -> None:
    clock = FakeClock()
    # Two tokens per chunk: four chunks, eight tokens by the server's count.
    scripted = ScriptedTransport(clock, [Script(usage_tokens=8)])
    client, request = _client(clock, scripted)
    async with client:
        record = await client.send(request)
    assert record.output_tokens == 8 and len(record.itl) == 3


async def test_without_usage_streamed_chunks_are_counted() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(send_usage=False, gaps=(0.1,) * 5)])
    client, request = _client(clock, scripted, endpoint=Endpoint.COMPLETIONS, prompt_tokens=9)
    async with client:
        record = await client.send(request)
    assert (record.output_tokens, record.input_tokens) == (6, 9)
    assert record.ttft == pytest.approx(0.1)


async def test_non_streamed_chat_has_latency_but_no_ttft() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(first=0.5, gaps=(0.1, 0.1))])
    client, request = _client(clock, scripted, stream=False)
    async with client:
        record = await client.send(request)
    assert record.ok and record.latency == pytest.approx(0.7)
    assert record.ttft is None and record.itl == () and record.tpot is None
    assert record.output_tokens == 3


async def test_non_streamed_completion_without_usage_counts_words() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(send_usage=False, gaps=(0.1,) * 4)])
    client, request = _client(clock, scripted, endpoint=Endpoint.COMPLETIONS, stream=False)
    async with client:
        record = await client.send(request)
    assert record.output_tokens == 5 and record.input_tokens == 32


async def test_embeddings_take_prompt_tokens_from_usage() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(first=0.05, prompt_tokens=11)])
    client, request = _client(clock, scripted, endpoint=Endpoint.EMBEDDINGS)
    async with client:
        record = await client.send(request)
    assert record.ok and record.latency == pytest.approx(0.05)
    assert (record.input_tokens, record.output_tokens, record.ttft) == (11, 0, None)


async def test_http_errors_are_recorded_with_status_and_message() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, [Script(status=429, first=0.01)])
    client, request = _client(clock, scripted)
    async with client:
        record = await client.send(request)
    assert not record.ok
    assert (record.status, record.error, record.message) == (429, "HTTP 429", "scripted 429")
    assert record.latency == pytest.approx(0.01)


def _fixed(response: httpx.Response) -> httpx.MockTransport:
    async def handle(request: httpx.Request) -> httpx.Response:
        return response

    return httpx.MockTransport(handle)


async def _send_with(transport: httpx.AsyncBaseTransport, **kwargs: object) -> RequestRecord:
    config = BenchConfig(url=URL, **kwargs)  # type: ignore[arg-type]
    async with BenchClient(config, transport=transport, clock=FakeClock()) as client:
        return await client.send(Workload(config, None).request(0))


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (httpx.Response(500, text="boom\n  trace"), "HTTP 500", "boom trace"),
        (httpx.Response(502, text=""), "HTTP 502", None),
        (httpx.Response(400, json={"detail": "bad field"}), "HTTP 400", "bad field"),
        (httpx.Response(400, json=["odd"]), "HTTP 400", '["odd"]'),
        (httpx.Response(400, json={"error": {"code": 5}}), "HTTP 400", '{"error":{"code":5}}'),
        (httpx.Response(400, text="x" * 500), "HTTP 400", "x" * 197 + "..."),
        (httpx.Response(200, text="not json"), INVALID_RESPONSE, "not JSON: not json"),
        (httpx.Response(200, json=[1, 2]), INVALID_RESPONSE, "not a JSON object: [1,2]"),
        (httpx.Response(200, json={"choices": []}), INVALID_RESPONSE, "no choices in the response"),
        (
            httpx.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=sse({"error": {"message": "engine died"}}),
            ),
            STREAM_ERROR,
            "engine died",
        ),
    ],
)
async def test_bad_responses_are_failures_not_crashes(
    response: httpx.Response, error: str, message: str | None
) -> None:
    record = await _send_with(_fixed(response))
    assert record.ok is False
    assert (record.error, record.message) == (error, message)


async def test_embeddings_without_data_are_invalid() -> None:
    record = await _send_with(
        _fixed(httpx.Response(200, json={"data": []})), endpoint=Endpoint.EMBEDDINGS
    )
    assert record.error == INVALID_RESPONSE


async def test_odd_but_valid_chunks_carry_no_tokens() -> None:
    stream = b"".join(
        [
            sse({"choices": "nope"}),
            sse({"choices": [{"delta": "nope"}]}),
            sse({"choices": [{"delta": {"content": 3}}]}),
            sse({"choices": [{"delta": {"content": "hi"}}], "usage": {"completion_tokens": True}}),
            sse("[DONE]"),
            sse({"choices": [{"delta": {"content": "after done"}}]}),
        ]
    )
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
    record = await _send_with(_fixed(response))
    assert record.ok is True
    assert record.output_tokens == 1  # a boolean count is ignored; one chunk had text


async def test_a_stream_that_ends_without_done_still_counts() -> None:
    stream = sse({"choices": [{"text": "a"}]}) + sse({"choices": [{"text": "b"}]})
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
    record = await _send_with(_fixed(response), endpoint=Endpoint.COMPLETIONS)
    assert record.ok and record.output_tokens == 2 and len(record.itl) == 1


async def test_non_stream_message_shapes() -> None:
    weird = httpx.Response(200, json={"choices": [{"message": "x"}]})
    record = await _send_with(_fixed(weird), stream=False)
    assert record.ok is True and record.output_tokens == 0


async def test_transport_errors_are_named_by_class() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    record = await _send_with(httpx.MockTransport(refuse))
    assert (record.error, record.status) == ("ConnectError", None)
    assert record.message == "refused"


async def test_list_models_and_unreachable_target() -> None:
    clock = FakeClock()
    scripted = ScriptedTransport(clock, models=["a", "b"])
    client, _ = _client(clock, scripted, api_key="sk-1")
    async with client:
        assert await client.list_models() == ["a", "b"]
    assert scripted.headers[0]["authorization"] == "Bearer sk-1"

    no_route = ScriptedTransport(clock, models=None)
    client, _ = _client(clock, no_route)
    async with client:
        assert await client.list_models() == []

    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("", request=request)

    config = BenchConfig(url=URL)
    async with BenchClient(config, transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(UnavailableError, match=r"cannot reach http://fake: ConnectError"):
            await client.list_models()
