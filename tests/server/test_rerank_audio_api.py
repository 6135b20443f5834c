"""``/v1/rerank``, ``/v1/score`` and ``/v1/audio/*`` in-process (TestClient) on tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hfserve.core.keystore import KeyStore
from hfserve.server.app import create_app
from hfserve.settings import Settings
from tests.fixtures.tiny_audio import TinyAudioModels, encoded_audio, wav_bytes
from tests.server.conftest import wait_ready
from tests.server.test_api import assert_error

pytestmark = pytest.mark.slow

DOCS = ["the quick brown fox", "hello world", "servers batch tokens", "a lazy dog"]


def _models(tiny: TinyAudioModels) -> list[str]:
    return [f"rr={tiny.reranker}", f"ctc={tiny.ctc}", f"whisper={tiny.whisper}"]


def _start(tmp: Path, tiny: TinyAudioModels, **overrides: Any) -> TestClient:
    values: dict[str, Any] = {
        "models": _models(tiny),
        "keys_file": tmp / "keys.json",
        "device": "cpu",
    }
    settings = Settings.load(None, **(values | overrides))
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.__enter__()
    wait_ready(client)
    return client


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, tiny_audio_models: TinyAudioModels
) -> Iterator[TestClient]:
    client = _start(tmp_path_factory.mktemp("keys"), tiny_audio_models, max_documents=8)
    yield client
    client.__exit__(None, None, None)


def _transcribe(client: TestClient, model: str, data: bytes, **fields: Any) -> Any:
    files = {"file": ("audio.bin", data, "application/octet-stream")}
    return client.post("/v1/audio/transcriptions", data={"model": model, **fields}, files=files)


def test_rerank_sorts_by_score_and_honours_top_n(api: TestClient) -> None:
    body = {"model": "rr", "query": "a fox", "documents": DOCS}
    full = api.post("/v1/rerank", json=body).json()
    scores = [r["relevance_score"] for r in full["results"]]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["index"] for r in full["results"]) == [0, 1, 2, 3]
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in full["results"])
    assert full["model"] == "rr" and full["id"].startswith("rerank-")
    assert full["usage"]["total_tokens"] == full["usage"]["prompt_tokens"] > 0

    top = api.post("/v1/rerank", json=body | {"top_n": 2, "return_documents": False}).json()
    assert [r["index"] for r in top["results"]] == [r["index"] for r in full["results"][:2]]
    assert all("document" not in r for r in top["results"])


def test_rerank_cache_hit_gets_a_new_id(api: TestClient) -> None:
    body = {"model": "rr", "query": "cached", "documents": ["x", "y"]}
    first = api.post("/v1/rerank", json=body)
    second = api.post("/v1/rerank", json=body)
    assert second.headers["x-cache"] == "hit"
    assert first.json()["results"] == second.json()["results"]
    assert first.json()["id"] != second.json()["id"]


def test_score_pairs_one_to_many_and_list_to_list(api: TestClient) -> None:
    one = api.post("/v1/score", json={"model": "rr", "text_1": "a fox", "text_2": DOCS}).json()
    assert [d["index"] for d in one["data"]] == [0, 1, 2, 3]
    ranked = api.post("/v1/rerank", json={"model": "rr", "query": "a fox", "documents": DOCS})
    by_index = {r["index"]: r["relevance_score"] for r in ranked.json()["results"]}
    assert [d["score"] for d in one["data"]] == pytest.approx([by_index[i] for i in range(4)])

    zipped = api.post(
        "/v1/score", json={"model": "rr", "text_1": ["a fox", "hello"], "text_2": DOCS[:2]}
    ).json()
    assert zipped["data"][0]["score"] == pytest.approx(by_index[0])
    single = api.post("/v1/score", json={"model": "rr", "text_1": "a", "text_2": "b"}).json()
    assert len(single["data"]) == 1 and single["object"] == "list"
    again = api.post("/v1/score", json={"model": "rr", "text_1": "a", "text_2": "b"})
    assert again.headers["x-cache"] == "hit" and again.json()["data"] == single["data"]
    assert again.json()["id"] != single["id"] and again.json()["created"] >= single["created"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": []}, "documents"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["d"] * 9}, "documents"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": [{"text": "d"}]}, "documents.0"),
        ("/v1/rerank", {"model": "rr", "query": "", "documents": ["d"]}, "query"),
        ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
        ("/v1/rerank", {"model": "ctc", "query": "q", "documents": ["d"]}, "model"),
        ("/v1/score", {"model": "rr", "text_1": [], "text_2": "b"}, "text_1"),
        ("/v1/score", {"model": "rr", "text_1": "a", "text_2": []}, "text_2"),
        ("/v1/score", {"model": "rr", "text_1": ["a", "b"], "text_2": ["c"]}, "text_2"),
        ("/v1/score", {"model": "rr", "text_1": "a", "text_2": ["b"] * 9}, "text_2"),
    ],
)
def test_rerank_and_score_refusals_name_the_field(
    api: TestClient, path: str, body: dict[str, Any], param: str
) -> None:
    assert_error(api.post(path, json=body), 400, param=param)


def test_transcription_formats(api: TestClient) -> None:
    audio = wav_bytes(2.0)
    as_json = _transcribe(api, "whisper", audio).json()
    assert set(as_json) == {"text", "usage"} and as_json["usage"]["seconds"] == 2
    text = _transcribe(api, "whisper", audio, response_format="text")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == as_json["text"] + "\n"
    verbose = _transcribe(
        api,
        "whisper",
        audio,
        response_format="verbose_json",
        **{"timestamp_granularities[]": "segment"},
    ).json()
    assert verbose["task"] == "transcribe" and verbose["duration"] == pytest.approx(2.0)
    [segment] = verbose["segments"]
    assert (segment["start"], segment["end"]) == (0.0, pytest.approx(2.0))
    assert segment["text"] == as_json["text"] and segment["tokens"]
    subtitles = _transcribe(api, "whisper", audio, response_format="srt")
    assert subtitles.text == f"1\n00:00:00,000 --> 00:00:02,000\n{as_json['text']}\n\n"
    vtt = _transcribe(api, "whisper", audio, response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt") and vtt.text.startswith("WEBVTT")


def test_long_audio_is_windowed_with_stitched_timestamps(api: TestClient) -> None:
    verbose = _transcribe(api, "ctc", wav_bytes(65.0), response_format="verbose_json").json()
    spans = [(s["start"], s["end"]) for s in verbose["segments"]]
    assert spans == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert verbose["text"] == " ".join(s["text"] for s in verbose["segments"] if s["text"])


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [("flac", "flac", 44100), ("mp3", "libmp3lame", 44100), ("ogg", "libopus", 48000)],
)
def test_compressed_formats_decode_and_resample(
    api: TestClient, container: str, codec: str, rate: int
) -> None:
    data = encoded_audio(3.0, container, codec, rate)
    verbose = _transcribe(api, "ctc", data, response_format="verbose_json").json()
    assert verbose["duration"] == pytest.approx(3.0, abs=0.1)


def test_translation_with_whisper_and_refused_for_ctc(api: TestClient) -> None:
    files = {"file": ("a.wav", wav_bytes(1.0), "audio/wav")}
    fields = {"model": "whisper", "language": "de", "prompt": "hello world", "temperature": "0.5"}
    ok = api.post(
        "/v1/audio/translations", data=fields | {"response_format": "verbose_json"}, files=files
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["task"] == "translate" and ok.json()["language"] == "de"
    refused = api.post("/v1/audio/translations", data={"model": "ctc"}, files=files)
    assert_error(refused, 400, param="model")


@pytest.mark.parametrize(
    ("model", "fields", "param"),
    [
        ("whisper", {"language": "xx"}, "language"),
        ("whisper", {"response_format": "docx"}, "response_format"),
        ("whisper", {"temperature": "3"}, "temperature"),
        (
            "whisper",
            {"timestamp_granularities[]": "word", "response_format": "verbose_json"},
            "timestamp_granularities",
        ),
        ("whisper", {"timestamp_granularities[]": "segment"}, "timestamp_granularities"),
        ("whisper", {"stream": "true"}, "stream"),
        ("whisper", {"include[]": "logprobs"}, "include"),
        ("ctc", {"language": "en"}, "language"),
        ("ctc", {"prompt": "hi"}, "prompt"),
        ("ctc", {"temperature": "0.2"}, "temperature"),
        ("rr", {}, "model"),
    ],
)
def test_transcription_refusals_name_the_field(
    api: TestClient, model: str, fields: dict[str, str], param: str
) -> None:
    assert_error(_transcribe(api, model, wav_bytes(0.5), **fields), 400, param=param)


def test_bad_uploads_are_400_naming_file(api: TestClient) -> None:
    assert_error(_transcribe(api, "ctc", b"this is not audio at all" * 50), 400, param="file")
    assert_error(_transcribe(api, "ctc", b""), 400, param="file")
    no_file = api.post("/v1/audio/transcriptions", files={"model": (None, "ctc")})
    assert_error(no_file, 400, param="file")
    stray = api.post("/v1/audio/transcriptions", data={"model": "ctc"}, files={"x": ("a", b"1")})
    assert_error(stray, 400, param="x")
    as_json = api.post("/v1/audio/transcriptions", json={"model": "ctc"})
    assert_error(as_json, 400, param="file")
    no_model = api.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav_bytes(0.5))})
    assert_error(no_model, 400, param="model")


def test_audio_limits_size_413_and_duration_400(
    tmp_path: Path, tiny_audio_models: TinyAudioModels
) -> None:
    client = _start(tmp_path, tiny_audio_models, max_audio_bytes="64KiB", max_audio_seconds=1.5)
    try:
        big = _transcribe(client, "ctc", wav_bytes(3.0))  # ~96 KB > 64 KiB
        assert_error(big, 413, param="file", code="request_too_large")
        long = _transcribe(client, "ctc", wav_bytes(1.8))  # fits the bytes, not the seconds
        assert_error(long, 400, param="file")
        assert "1.5 seconds" in long.json()["error"]["message"]
        # The audio limit is for the upload endpoints only; JSON keeps max_body_bytes.
        assert _transcribe(client, "ctc", wav_bytes(1.0)).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_rate_limit_tokens_are_charged(tmp_path: Path, tiny_audio_models: TinyAudioModels) -> None:
    keys = tmp_path / "keys.json"
    # 60 tokens/min refill one token a second: the budget after a rerank shows its charge.
    _, key = KeyStore(keys).create("t", tpm=60)
    client = _start(tmp_path, tiny_audio_models, keys_file=keys)
    headers = {"authorization": f"Bearer {key}"}
    try:
        body = {"model": "rr", "query": "a fox", "documents": DOCS}
        first = client.post("/v1/rerank", json=body, headers=headers)
        used = first.json()["usage"]["total_tokens"]
        second = client.post("/v1/rerank", json=body | {"top_n": 1}, headers=headers)
        remaining = int(second.headers["x-ratelimit-remaining-tokens"])
        assert 0 < used < 60
        assert 60 - used <= remaining <= 60 - used + 10
    finally:
        client.__exit__(None, None, None)


def test_openapi_and_metrics_know_the_new_endpoints(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/v1/rerank", "/v1/score", "/v1/audio/transcriptions", "/v1/audio/translations"):
        assert "post" in paths[path]
    upload = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    api.post("/v1/rerank", json={"model": "rr", "query": "q", "documents": ["d"]})
    _transcribe(api, "ctc", wav_bytes(0.5))
    text = api.get("/metrics").text
    assert 'route="/v1/rerank"' in text and 'route="/v1/audio/transcriptions"' in text
