"""A real ``hfserve serve`` with a cross-encoder, a Whisper and a CTC model: reranking over
httpx checked against the model's own logits, speech-to-text through the official SDK."""

from __future__ import annotations

import io

import httpx
import openai
import pytest
import srt
import webvtt

from tests.fixtures.tiny_audio import TinyAudioModels, wav_bytes
from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUERY = "where does the fox sleep"
DOCS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a tiny corpus",
    "models serve requests; servers batch tokens",
    "embeddings map sentences to vectors",
    "0123456789 !?.,;:",
    "the lazy dog sleeps in the sun all day long",
]


def _logits_order(folder: str) -> list[int]:
    """Document indices by the cross-encoder's own logits, straight from transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer([QUERY] * len(DOCS), DOCS, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits[:, 0].tolist()
    return sorted(range(len(DOCS)), key=lambda i: -logits[i])


def test_rerank_and_transcription_on_a_real_server(
    start_server: StartServer, tiny_audio_models: TinyAudioModels
) -> None:
    tiny = tiny_audio_models
    server = start_server(
        models=[f"rr={tiny.reranker}", f"whisper={tiny.whisper}", f"ctc={tiny.ctc}"]
    )

    response = httpx.post(
        server.url + "/v1/rerank",
        json={"model": "rr", "query": QUERY, "documents": DOCS},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    served = [item["index"] for item in response.json()["results"]]
    assert served == _logits_order(str(tiny.reranker))

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    audio = ("speech.wav", wav_bytes(2.5), "audio/wav")
    as_json = client.audio.transcriptions.create(model="whisper", file=audio)
    assert as_json.text.strip()
    text = client.audio.transcriptions.create(model="whisper", file=audio, response_format="text")
    assert text.strip() == as_json.text

    subtitles = client.audio.transcriptions.create(
        model="whisper", file=audio, response_format="srt"
    )
    [cue] = list(srt.parse(subtitles))
    assert cue.content == as_json.text
    assert cue.start.total_seconds() == 0 and cue.end.total_seconds() == pytest.approx(2.5)

    captions = client.audio.transcriptions.create(
        model="whisper", file=audio, response_format="vtt"
    )
    [caption] = webvtt.from_buffer(io.StringIO(captions)).captions
    assert caption.text == as_json.text
    assert (caption.start, caption.end) == ("00:00:00.000", "00:00:02.500")

    verbose = client.audio.transcriptions.create(
        model="ctc",
        file=("long.wav", wav_bytes(40.0), "audio/wav"),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert [(s.start, s.end) for s in verbose.segments or []] == [(0.0, 30.0), (30.0, 40.0)]

    # openai 3.x marks its translations method deprecated; it still sends the same request.
    with pytest.warns(DeprecationWarning, match="deprecated"):
        translated = client.audio.translations.create(model="whisper", file=audio)
    assert isinstance(translated.text, str)

    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(model="ctc", file=("x.wav", b"not audio", "audio/wav"))
    assert refused.value.body["param"] == "file"  # type: ignore[index]
