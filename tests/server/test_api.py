"""The OpenAI-compatible API in-process (TestClient) on the tiny models."""

from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from hfserve.core.keystore import KeyStore

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello world"}]}


def assert_error(
    response: Any, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err  # type: ignore[no-any-return]


def sse_events(text: str) -> list[Any]:
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "hfserve_models_loaded 3.0" in metrics.text


def test_request_id_round_trip(client: TestClient) -> None:
    assert (
        client.get("/health", headers={"x-request-id": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    generated = client.get("/health", headers={"x-request-id": "bad id with spaces"}).headers[
        "x-request-id"
    ]
    assert generated != "bad id with spaces" and len(generated) == 32


def test_models_list_and_get(client: TestClient) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    cards = {m["id"]: m for m in data["data"]}
    assert set(cards) == {"tiny-llama", "tiny-bert", "tiny-cls"}
    assert all(m["object"] == "model" and m["loaded"] and m["pinned"] for m in cards.values())
    # Alias, task, state and pin; never where the model lives on the server's disk.
    assert all(m["state"] == "loaded" and "source" not in m for m in cards.values())
    assert {m["id"]: m["task"] for m in cards.values()} == {
        "tiny-llama": "text-generation",
        "tiny-bert": "embeddings",
        "tiny-cls": "text-classification",
    }
    assert client.get("/v1/models/tiny-bert").json()["id"] == "tiny-bert"
    assert_error(client.get("/v1/models/nope"), 404, code="model_not_found")


def test_models_list_follows_loads_and_evictions(make_client: Any) -> None:
    # The encoded listing is cached between requests: it must change when a model unloads
    # and again when it loads.
    client = make_client()
    loader = client.app.state.hfserve.loader  # type: ignore[attr-defined]

    def loaded() -> dict[str, bool]:
        return {m["id"]: m["loaded"] for m in client.get("/v1/models").json()["data"]}

    assert loaded() == {"tiny-llama": True, "tiny-bert": True, "tiny-cls": True}
    assert client.portal.call(loader.evict, "tiny-bert")  # type: ignore[union-attr]
    assert loaded() == {"tiny-llama": True, "tiny-bert": False, "tiny-cls": True}
    embedded = client.post("/v1/embeddings", json={"model": "tiny-bert", "input": "hi"})
    assert embedded.status_code == 200
    assert loaded()["tiny-bert"] is True


def test_refusals_carry_cors_and_request_id_headers(make_client: Any, tmp_path: Any) -> None:
    # CORS wraps the whole stack, so a browser can read a 401/429 too; preflights are answered
    # without a key.
    origin = "https://app.example"
    _, key = KeyStore(tmp_path / "keys.json").create("web", rpm=1)
    client = make_client(cors_origins=[origin])
    refused = client.get("/v1/models", headers={"Origin": origin})
    assert_error(refused, 401, code="invalid_api_key")
    assert refused.headers["access-control-allow-origin"] == origin
    assert refused.headers["www-authenticate"] == "Bearer"
    assert len(refused.headers["x-request-id"]) == 32
    preflight = client.options(
        "/v1/chat/completions",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    headers = {"Origin": origin, "Authorization": f"Bearer {key}", "x-request-id": "r-1"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    limited = client.get("/v1/models", headers=headers)
    assert_error(limited, 429, code="rate_limit_exceeded")
    assert limited.headers["access-control-allow-origin"] == origin
    assert limited.headers["x-request-id"] == "r-1"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"


def test_chat_completion(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 5, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.headers["x-cache"] == "miss"
    again = client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 5, "temperature": 0})
    assert again.headers["x-cache"] == "hit"
    assert again.json()["choices"] == body["choices"] and again.json()["id"] != body["id"]


def test_chat_ignore_eos_forces_length(client: TestClient) -> None:
    body = client.post(
        "/v1/chat/completions", json=CHAT | {"max_tokens": 7, "ignore_eos": True, "seed": 1}
    ).json()
    assert body["usage"]["completion_tokens"] == 7
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_n_choices(client: TestClient) -> None:
    body = client.post(
        "/v1/chat/completions", json=CHAT | {"max_tokens": 3, "n": 2, "seed": 3}
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]


def test_chat_stream_with_usage(client: TestClient) -> None:
    payload = CHAT | {
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals[-1]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6


def test_completions_variants(client: TestClient) -> None:
    one = client.post(
        "/v1/completions", json={"model": "tiny-llama", "prompt": "the quick", "max_tokens": 3}
    )
    assert one.status_code == 200 and one.json()["object"] == "text_completion"
    many = client.post(
        "/v1/completions",
        json={"model": "tiny-llama", "prompt": ["a", "b c"], "max_tokens": 2, "temperature": 0},
    ).json()
    assert [c["index"] for c in many["choices"]] == [0, 1]
    ids = client.post(
        "/v1/completions", json={"model": "tiny-llama", "prompt": [5, 6, 7], "max_tokens": 2}
    )
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 3
    # Checked by the route against the model's declared vocab_size, before any generation.
    model = client.app.state.hfserve.loader.cache.get("tiny-llama")  # type: ignore[attr-defined]
    for bad in ([10**9], [model.vocab_size], [-1]):
        refused = client.post(
            "/v1/completions", json={"model": "tiny-llama", "prompt": bad, "max_tokens": 2}
        )
        assert_error(refused, 400, param="prompt")
        message = refused.json()["error"]["message"]
        assert message == f"prompt token ids must be integers in [0, {model.vocab_size})"


def test_completions_stream(client: TestClient) -> None:
    payload = {
        "model": "tiny-llama",
        "prompt": "hello",
        "max_tokens": 4,
        "stream": True,
        "ignore_eos": True,
    }
    with client.stream("POST", "/v1/completions", json=payload) as response:
        events = sse_events(response.read().decode())
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert all(e["object"] == "text_completion" for e in events[:-1])


def test_embeddings_float_and_base64(client: TestClient) -> None:
    floats = client.post("/v1/embeddings", json={"model": "tiny-bert", "input": ["hello", "world"]})
    assert floats.status_code == 200, floats.text
    body = floats.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    vec = body["data"][0]["embedding"]
    assert len(vec) == 32 and body["usage"]["prompt_tokens"] > 0
    b64 = client.post(
        "/v1/embeddings",
        json={"model": "tiny-bert", "input": ["hello", "world"], "encoding_format": "base64"},
    ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(vec, abs=1e-6)
    assert floats.headers["x-cache"] == "miss"
    assert (
        client.post(
            "/v1/embeddings", json={"model": "tiny-bert", "input": ["hello", "world"]}
        ).headers["x-cache"]
        == "hit"
    )
    tokens = client.post("/v1/embeddings", json={"model": "tiny-bert", "input": [[3, 4, 5]]})
    assert tokens.status_code == 200


def test_classifications(client: TestClient) -> None:
    body = client.post(
        "/v1/classifications", json={"model": "tiny-cls", "input": ["good", "bad"], "top_k": 2}
    ).json()
    assert len(body["data"]) == 2
    first = body["data"][0]
    assert first["label"] in {"negative", "neutral", "positive"} and len(first["labels"]) == 2
    assert first["labels"][0]["score"] >= first["labels"][1]["score"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (CHAT | {"temperature": 3}, "temperature"),
        (CHAT | {"max_tokens": 0}, "max_tokens"),
        (CHAT | {"max_tokens": -1}, "max_tokens"),
        (CHAT | {"max_tokens": 10**9}, "max_tokens"),
        (CHAT | {"n": 0}, "n"),
        (CHAT | {"presence_penalty": 3.0}, "presence_penalty"),
        (CHAT | {"top_logprobs": 3}, "top_logprobs"),
        (CHAT | {"logit_bias": {"100000": 5}}, "logit_bias"),
        (CHAT | {"tools": [{"type": "function"}]}, "tools.0.function"),
        (CHAT | {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "tiny-llama", "messages": []}, "messages"),
        (
            {"model": "tiny-llama", "messages": [{"role": "wizard", "content": "x"}]},
            "messages.0.role",
        ),
        ({"model": "tiny-llama", "messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (CHAT | {"messages": [{"role": "user", "content": "word " * 400}]}, "messages"),
        (CHAT | {"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_chat_bad_parameters(client: TestClient, payload: dict[str, Any], param: str) -> None:
    assert_error(client.post("/v1/chat/completions", json=payload), 400, param=param)


def test_unknown_fields_are_ignored(client: TestClient) -> None:
    response = client.post(
        "/v1/chat/completions", json=CHAT | {"max_tokens": 2, "some_future_field": {"x": 1}}
    )
    assert response.status_code == 200


def test_wrong_endpoint_for_model(client: TestClient) -> None:
    # Twice: the second answer comes from the per-class cache of the protocol check.
    for _ in range(2):
        assert_error(
            client.post("/v1/chat/completions", json=CHAT | {"model": "tiny-bert"}),
            400,
            param="model",
        )
        assert_error(
            client.post("/v1/embeddings", json={"model": "tiny-llama", "input": "x"}),
            400,
            param="model",
        )
        ok = client.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x"})
        assert ok.status_code == 200


def test_unknown_model_is_404(client: TestClient) -> None:
    err = assert_error(
        client.post("/v1/chat/completions", json=CHAT | {"model": "gpt-9"}),
        404,
        code="model_not_found",
    )
    assert "tiny-llama" in err["message"]


def test_malformed_bodies(client: TestClient) -> None:
    post = client.post
    assert_error(
        post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert_error(
        post(
            "/v1/chat/completions",
            content=b"\xff\xfe",
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert_error(
        post("/v1/chat/completions", content=b"[]", headers={"content-type": "application/json"}),
        400,
    )
    assert_error(
        post("/v1/chat/completions", content=b"", headers={"content-type": "application/json"}), 400
    )
    assert_error(
        post("/v1/chat/completions", content=b"model=x", headers={"content-type": "text/plain"}),
        400,
    )
    deep = b"[" * 5000 + b"]" * 5000
    assert_error(
        post("/v1/chat/completions", content=deep, headers={"content-type": "application/json"}),
        400,
    )
    assert_error(
        post("/v1/embeddings", json={"model": "tiny-bert", "input": []}), 400, param="input"
    )
    assert_error(
        post("/v1/embeddings", json={"model": "tiny-bert", "input": [""]}), 400, param="input"
    )
    assert_error(
        post("/v1/embeddings", json={"model": "tiny-bert", "input": "x", "dimensions": 8}),
        400,
        param="dimensions",
    )


def test_body_too_large(make_client: Any) -> None:
    client = make_client(max_body_bytes=2048)
    big = {"model": "tiny-bert", "input": "x" * 4096}
    assert_error(client.post("/v1/embeddings", json=big), 413)

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "tiny-bert", "input": "'
        yield b"x" * 4096
        yield b'"}'

    assert_error(
        client.post(
            "/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}
        ),
        413,
    )


def test_too_many_inputs(make_client: Any) -> None:
    client = make_client(max_inputs=2)
    assert_error(
        client.post("/v1/embeddings", json={"model": "tiny-bert", "input": ["a", "b", "c"]}),
        400,
        param="input",
    )


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_auth(make_client: Any, tmp_path: Any) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, key = store.create("ci")
    client = make_client()
    assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
    assert_error(client.get("/v1/models", headers={"Authorization": "Bearer hf-wrong"}), 401)
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/models", headers={"x-api-key": key}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200
    record = store.list_keys()[0]
    store.revoke(record.id)
    deadline = time.monotonic() + 1.0  # the server re-reads the keys file at most every 0.25 s
    while client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code != 401:
        assert time.monotonic() < deadline, "revocation not seen within 1 s"
        time.sleep(0.02)


def test_no_auth_flag_disables_keys(make_client: Any, tmp_path: Any) -> None:
    KeyStore(tmp_path / "keys.json").create("ci")
    client = make_client(auth=False)
    assert client.get("/v1/models").status_code == 200


def test_rate_limit_headers_and_429(make_client: Any, tmp_path: Any) -> None:
    _, key = KeyStore(tmp_path / "keys.json").create("limited", rpm=2, tpm=100000)
    client = make_client()
    headers = {"Authorization": f"Bearer {key}"}
    first = client.get("/v1/models", headers=headers)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert client.get("/v1/models", headers=headers).status_code == 200
    refused = client.get("/v1/models", headers=headers)
    assert_error(refused, 429, code="rate_limit_exceeded")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "hfserve_rate_limited_total" in client.get("/metrics").text


def test_tokens_per_minute_budget(make_client: Any, tmp_path: Any) -> None:
    _, key = KeyStore(tmp_path / "keys.json").create("tokens", tpm=10)
    client = make_client()
    headers = {"Authorization": f"Bearer {key}"}
    ok = client.post(
        "/v1/chat/completions", json=CHAT | {"max_tokens": 8, "ignore_eos": True}, headers=headers
    )
    assert ok.status_code == 200
    assert_error(
        client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 2}, headers=headers), 429
    )


def test_drain_refuses_new_work(make_client: Any) -> None:
    client = make_client()
    state = client.app.state.hfserve  # type: ignore[attr-defined]
    state.begin_drain()
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200
    refused = client.get("/v1/models")
    assert_error(refused, 503, code="shutting_down")
    assert refused.headers["retry-after"] == "1"


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"} <= set(
        doc["paths"]
    )


def test_metrics_after_traffic(make_client: Any) -> None:
    client = make_client()
    client.post(
        "/v1/chat/completions", json=CHAT | {"max_tokens": 3, "ignore_eos": True, "stream": True}
    )
    client.post("/v1/embeddings", json={"model": "tiny-bert", "input": ["a", "b"]})
    text = client.get("/metrics").text
    for name in (
        'hfserve_requests_total{model="tiny-llama",route="/v1/chat/completions",status="200"}',
        "hfserve_time_to_first_token_seconds_count",
        'hfserve_generation_tokens_total{model="tiny-llama"} 3.0',
        # Batch metrics carry the served alias like the rest, not the folder the model came from.
        'hfserve_batch_size_count{model="tiny-bert"} 1.0',
        'hfserve_queue_wait_seconds_count{model="tiny-bert"} 2.0',
        "hfserve_model_loads_total",
    ):
        assert name in text, name
