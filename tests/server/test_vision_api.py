"""Images in ``/v1/chat/completions`` through the real app: a tiny LLaVA next to a text model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hfserve.server.app import create_app
from hfserve.settings import Settings
from tests.fixtures.tiny_models import TinyModels
from tests.fixtures.tiny_vision import png_data_url
from tests.server.conftest import wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vclient(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels, tiny_llava: Path
) -> Iterator[TestClient]:
    settings = Settings.load(
        None,
        models=[f"vlm={tiny_llava}", f"tiny-llama={tiny_models.llama}"],
        keys_file=tmp_path_factory.mktemp("keys") / "keys.json",
        device="cpu",
        max_images_per_request=2,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def chat(*parts: dict[str, Any], model: str = "vlm", **kw: Any) -> dict[str, Any]:
    content = [*parts, {"type": "text", "text": "what is in the picture?"}]
    return {"model": model, "messages": [{"role": "user", "content": content}]} | kw


def image(url: str | None = None) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url or png_data_url(), "detail": "auto"}}


def error_of(response: Any, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    err: dict[str, Any] = response.json()["error"]
    return err


def test_vision_chat_returns_tokens_and_is_cached(vclient: TestClient) -> None:
    body = chat(image(), max_tokens=5, temperature=0, extra={"ignored": True})
    first = vclient.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["usage"]["completion_tokens"] >= 1
    assert data["usage"]["prompt_tokens"] > 16  # the image's 16 tokens are in the prompt
    assert first.headers["x-cache"] == "miss"
    again = vclient.post("/v1/chat/completions", json=body)
    assert again.headers["x-cache"] == "hit"
    assert again.json()["choices"] == data["choices"]
    other = vclient.post(
        "/v1/chat/completions",
        json=chat(image(png_data_url(color=(0, 0, 255))), max_tokens=5, temperature=0),
    )
    assert other.headers["x-cache"] == "miss"  # another image is another request


def test_vision_chat_streams_n_choices(vclient: TestClient) -> None:
    body = chat(image(), max_tokens=4, temperature=0.9, seed=1, n=2, stream=True)
    body |= {"stream_options": {"include_usage": True}, "ignore_eos": True}
    with vclient.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["length", "length"]
    assert events[-1]["usage"]["completion_tokens"] == 8


def test_text_requests_to_the_vision_model(vclient: TestClient) -> None:
    plain = {"model": "vlm", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}
    assert vclient.post("/v1/chat/completions", json=plain).status_code == 200
    completion = {"model": "vlm", "prompt": "the quick", "max_tokens": 3}
    assert vclient.post("/v1/completions", json=completion).status_code == 200


@pytest.mark.parametrize(
    ("body", "param", "match"),
    [
        (chat(image(), model="tiny-llama"), "messages.0.content.0", "reads text only"),
        (chat(image("data:image/png;base64,aGVsbG8=")), "messages.0.content.0", "decoded"),
        (chat(image("data:text/plain;base64,aGk=")), "messages.0.content.0", "not an image"),
        (chat(image(), image(), image()), "messages", "allows 2 per request"),
        (chat(image("https://example.com/cat.png")), "messages.0.content.0", "remote"),
        (chat({"type": "image_url", "image_url": {}}), "messages.0.content", "Field required"),
        (chat({"type": "image_url", "image_url": {"url": "x", "detail": "max"}}), "messages.0.content", "'auto', 'low' or 'high'"),
        (chat({"type": "video_url"}), "messages.0.content", "'video_url'"),
    ],
)  # fmt: skip
def test_bad_images_get_a_400_naming_the_part(
    vclient: TestClient, body: dict[str, Any], param: str, match: str
) -> None:
    err = error_of(vclient.post("/v1/chat/completions", json=body | {"max_tokens": 2}))
    assert err["param"] == param
    assert match in err["message"]


def test_image_before_text_in_a_later_message(vclient: TestClient) -> None:
    body = {
        "model": "tiny-llama",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, image()]},
        ],
    }
    err = error_of(vclient.post("/v1/chat/completions", json=body))
    assert err["param"] == "messages.1.content.1"
    assert err["code"] == "model_not_supported"


def test_metrics_count_vision_tokens(vclient: TestClient) -> None:
    vclient.post("/v1/chat/completions", json=chat(image(), max_tokens=2, temperature=0.5))
    text = vclient.get("/metrics").text
    assert 'hfserve_generation_tokens_total{model="vlm"}' in text
    assert 'hfserve_requests_total{model="vlm",route="/v1/chat/completions",status="200"}' in text


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", True),
        ("presence_penalty", 0.5),
        ("logit_bias", {"1": 5}),
        ("top_k", 4),
        ("repetition_penalty", 1.2),
    ],
)
def test_sampling_extras_the_generate_path_lacks_are_refused_not_ignored(
    vclient: TestClient, field: str, value: Any
) -> None:
    response = vclient.post(
        "/v1/chat/completions", json=chat(image(), max_tokens=2, **{field: value})
    )
    err = error_of(response)
    assert err["param"] == field
    assert "image-text-to-text" in err["message"]


def test_structured_output_and_tools_are_refused_for_the_vision_model(vclient: TestClient) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "boolean"}}}
    err = error_of(vclient.post("/v1/chat/completions", json=chat(image(), response_format=fmt)))
    assert err["param"] == "response_format"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    err = error_of(vclient.post("/v1/chat/completions", json=chat(image(), tools=[tool])))
    assert err["param"] == "tools"
