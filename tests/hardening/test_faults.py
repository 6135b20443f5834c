"""Faults: models that raise, loads that hang, slow clients, exceptions inside streams."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from hfserve.runtime.loader import ModelLoader
from hfserve.server.app import create_app
from hfserve.settings import Settings
from hfserve.skills.base import GenerationChunk, GenerationRequest, RuntimeOptions, SkillInfo
from hfserve.skills.registry import SkillRegistry
from tests.hardening.conftest import KeyedServer, error_shape

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hello world"}]}
POISON = 13  # a token id the faulty model "cannot handle"


def _loaded(client: TestClient, alias: str) -> Any:
    model = client.app.state.hfserve.loader.cache.peek(alias)  # type: ignore[attr-defined]
    assert model is not None, alias
    return model


def _sse_events(text: str) -> list[Any]:
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize(
    ("alias", "path", "ok_input"),
    [("tiny-bert", "/v1/embeddings", [5, 6, 7]), ("tiny-cls", "/v1/classifications", None)],
)
def test_regression_one_bad_input_failed_every_request_in_its_batch(
    make_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    alias: str,
    path: str,
    ok_input: list[int] | None,
) -> None:
    """A model raising on one input used to fail every caller that shared its micro-batch."""
    client: TestClient = make_client(max_batch_size=8, response_cache=False)
    model = _loaded(client, alias)
    real_forward = model._forward
    gate, entered = threading.Event(), threading.Event()
    batches: list[int] = []

    def faulty_forward(input_ids: Any, mask: Any) -> Any:
        batches.append(int(input_ids.shape[0]))
        if len(batches) == 1:  # hold the first batch so the next requests queue up together
            entered.set()
            assert gate.wait(30)
        if bool((input_ids == POISON).any()):
            raise RuntimeError("CUDA error: device-side assert triggered (simulated)")
        return real_forward(input_ids, mask)

    monkeypatch.setattr(model, "_forward", faulty_forward)
    # Classification takes text: find a word whose token ids include the poison id.
    if ok_input is None:
        tok = model._tokenizer
        bad_text = tok.decode([POISON])
        good = ["hello", "world"]
        bad: Any = bad_text
        assert POISON in model.encode_inputs([bad_text]).ids[0]
        assert all(POISON not in ids for ids in model.encode_inputs(good).ids)
    else:
        good, bad = [[5, 6, 7], [8, 9]], [4, POISON, 4]

    def post(item: Any) -> httpx.Response:
        return client.post(path, json={"model": alias, "input": [item]})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        warm = pool.submit(post, good[0])
        assert entered.wait(30)
        futures = [pool.submit(post, item) for item in (good[0], bad, good[1])]
        deadline = time.monotonic() + 30
        while model.queue_depth < 3:  # all three wait behind the held batch
            assert time.monotonic() < deadline, "requests never queued"
            time.sleep(0.005)
        gate.set()
        responses = [f.result() for f in futures]
        assert warm.result().status_code == 200
    assert batches[1] == 3, batches  # the three shared one batch...
    ok1, failed, ok2 = responses
    assert ok1.status_code == 200 and ok2.status_code == 200, (ok1.text, ok2.text)
    assert failed.status_code == 500
    err = error_shape(failed.json())  # ...and only the poisoned one failed, clearly
    assert err["type"] == "server_error" and err["code"] == "inference_failed"
    assert "RuntimeError" in err["message"] and "CUDA" not in err["message"]
    assert client.get("/health").status_code == 200
    assert post(good[1]).status_code == 200


def test_a_single_failing_input_is_a_clear_500(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client: TestClient = make_client(response_cache=False)
    model = _loaded(client, "tiny-bert")

    def broken(input_ids: Any, mask: Any) -> Any:
        raise ValueError("shape mismatch /secret/path/weights.bin")

    monkeypatch.setattr(model, "_forward", broken)
    failed = client.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x"})
    assert failed.status_code == 500
    err = error_shape(failed.json())
    assert err["type"] == "server_error" and "/secret/path" not in err["message"]


def _faulty_generate(model: Any, *, fail_after: int) -> Any:
    real = model.generate

    async def generate(request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if POISON not in request.prompt_ids:
            async for chunk in real(request):
                yield chunk
            return
        count = 0
        async for chunk in real(request):
            if count == fail_after:
                raise RuntimeError("kernel crashed (simulated)")
            count += 1
            yield chunk

    return generate


def test_generation_that_raises_fails_only_its_request(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client: TestClient = make_client(response_cache=False)
    model = _loaded(client, "tiny-llama")
    monkeypatch.setattr(model, "generate", _faulty_generate(model, fail_after=1))
    poisoned = {"model": "tiny-llama", "prompt": [4, POISON, 4], "max_tokens": 4}
    extra = {"ignore_eos": True}
    failed = client.post("/v1/completions", json=poisoned | extra)
    err = error_shape(failed.json())
    assert failed.status_code == 500 and err["type"] == "server_error"
    assert "kernel crashed" not in err["message"]
    ok = client.post("/v1/completions", json=poisoned | extra | {"prompt": [4, 5, 4]})
    assert ok.status_code == 200, ok.text
    # n=2 on a poisoned prompt: both choices share the fault; the next request is unaffected.
    assert client.post("/v1/completions", json=poisoned | extra | {"n": 2}).status_code == 500
    assert client.post("/v1/chat/completions", json=CHAT | {"max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("fail_after", [0, 2])
def test_exception_inside_a_stream_ends_it_with_an_error_event(
    make_client: Any, monkeypatch: pytest.MonkeyPatch, fail_after: int
) -> None:
    client: TestClient = make_client(response_cache=False)
    model = _loaded(client, "tiny-llama")
    monkeypatch.setattr(model, "generate", _faulty_generate(model, fail_after=fail_after))
    body = {"model": "tiny-llama", "prompt": [4, POISON, 4], "max_tokens": 8, "stream": True}
    with client.stream("POST", "/v1/completions", json=body | {"ignore_eos": True}) as response:
        assert response.status_code == 200  # headers went out before the fault
        text = response.read().decode()
    events = _sse_events(text)
    assert events[-1] == "[DONE]"
    err = error_shape(events[-2])
    assert err["type"] == "server_error" and err["code"] == "internal_error"
    tokens = [e for e in events[:-2] if isinstance(e, dict) and "choices" in e]
    assert len(tokens) == fail_after
    assert client.get("/health").status_code == 200


class _HangingSkill:
    """A skill whose load never finishes (a stuck NFS mount, a deadlocked driver...)."""

    info = SkillInfo(name="hang", task="embeddings", architectures=("HangModel",), source="test")

    def __init__(self) -> None:
        self.release = threading.Event()
        self.loads = 0

    def load(self, model_path: str, device: str, dtype: str, options: RuntimeOptions) -> Any:
        self.loads += 1
        self.release.wait(60)
        raise RuntimeError("released at teardown")


@pytest.fixture
def hanging_skill() -> Iterator[_HangingSkill]:
    """The hanging skill; its blocked loader threads are released at teardown."""
    skill = _HangingSkill()
    yield skill
    skill.release.set()


def test_a_hanging_load_is_cut_by_the_load_timeout(
    tmp_path: Path, hanging_skill: _HangingSkill
) -> None:
    folder = tmp_path / "hang"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["HangModel"]}))
    settings = Settings(
        models=[f"hang={folder}"],
        keys_file=tmp_path / "keys.json",
        device="cpu",
        load_timeout=0.3,
        breaker_failures=2,
    )
    registry = SkillRegistry(include_builtins=False, skills=[hanging_skill])
    loader = ModelLoader(settings, registry=registry)
    app = create_app(settings, loader=loader)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/health").status_code == 200  # the loop answers while a load hangs
        deadline = time.monotonic() + 30
        while "error" not in (ready := client.get("/ready")).json():
            assert time.monotonic() < deadline, "preload never timed out"
            time.sleep(0.02)
        assert ready.status_code == 503
        assert "took longer than 0.3s" in ready.json()["error"]
        failed = client.post("/v1/embeddings", json={"model": "hang", "input": "x"})
        err = error_shape(failed.json())
        assert failed.status_code == 500 and err["code"] == "model_load_failed"
        assert "took longer than 0.3s" in err["message"] and "--load-timeout" in err["message"]
        # Two failures open the breaker: the next request is refused fast with Retry-After.
        started = time.perf_counter()
        refused = client.post("/v1/embeddings", json={"model": "hang", "input": "x"})
        assert time.perf_counter() - started < 0.25
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert error_shape(refused.json())["code"] == "circuit_open"
        assert hanging_skill.loads == 2
        # Unblock the stuck loads before the app shuts down, which waits for its load threads:
        # released only at fixture teardown, they held this test for their whole 60 s.
        hanging_skill.release.set()


def _slow_reader(url: str, headers: dict[str, str]) -> socket.socket:
    """Open a long stream over a tiny receive window and never read from it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((host, int(port)))
    body = json.dumps(
        {
            "model": "tiny-llama",
            "prompt": "x",
            "max_tokens": 200,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{head}\r\n".encode()
        + body
    )
    return sock


@pytest.mark.integration
def test_slow_clients_do_not_block_others(keyed_server: KeyedServer) -> None:
    headers = keyed_server.headers
    # Slowloris both ways: streams nobody reads, and requests whose headers never finish.
    readers = [_slow_reader(keyed_server.url, headers) for _ in range(4)]
    half_open = []
    for _ in range(8):
        sock = socket.create_connection(("127.0.0.1", keyed_server.process.port))
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n")
        half_open.append(sock)
    try:
        with httpx.Client(base_url=keyed_server.url, headers=headers, timeout=30) as http:
            for _ in range(3):
                started = time.perf_counter()
                assert http.get("/health").status_code == 200
                ok = http.post("/v1/embeddings", json={"model": "tiny-bert", "input": "hi"})
                assert ok.status_code == 200
                chat = http.post("/v1/chat/completions", json=CHAT | {"max_tokens": 3})
                assert chat.status_code == 200
                # Generous: a loaded 2-core CI box, but far from "blocked until they give up".
                assert time.perf_counter() - started < 10
    finally:
        for sock in readers + half_open:
            sock.close()
