"""The speech-to-text skill: decoding, windows, Whisper and CTC models, option checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from hfserve.errors import InferenceError, InvalidRequestError, ShuttingDownError
from hfserve.skills._speech import CTCSpeechModel, Seq2SeqSpeechModel, SpeechModel
from hfserve.skills.audio import decode_audio, windows
from hfserve.skills.base import RuntimeOptions, TranscriptionModel, TranscriptionOptions
from hfserve.skills.speech import SpeechToTextSkill
from tests.fixtures.tiny_audio import TinyAudioModels, encoded_audio, wav_bytes

pytestmark = pytest.mark.slow


async def _load(folder: str) -> SpeechModel:
    model = SpeechToTextSkill().load(folder, "cpu", "float32", RuntimeOptions(max_batch_size=8))
    assert isinstance(model, SpeechModel) and isinstance(model, TranscriptionModel)
    await model.start()
    return model


@pytest.fixture
async def whisper(tiny_audio_models: TinyAudioModels) -> AsyncIterator[Seq2SeqSpeechModel]:
    model = await _load(str(tiny_audio_models.whisper))
    assert isinstance(model, Seq2SeqSpeechModel)
    yield model
    await model.aclose()


@pytest.fixture
async def ctc(tiny_audio_models: TinyAudioModels) -> AsyncIterator[CTCSpeechModel]:
    model = await _load(str(tiny_audio_models.ctc))
    assert isinstance(model, CTCSpeechModel)
    yield model
    await model.aclose()


def test_decode_resamples_downmixes_and_refuses_what_is_not_audio() -> None:
    stereo_8k = decode_audio(wav_bytes(1.0, rate=8000, channels=2), 16000, 60)
    assert stereo_8k.dtype == np.float32 and stereo_8k.shape == (16000,)
    opus = decode_audio(encoded_audio(2.0, "ogg", "libopus", 48000), 16000, 60)
    assert abs(opus.shape[0] - 32000) < 1600
    for bad, message in [
        (b"", "empty"),
        (b"plain text, not audio" * 40, "not audio"),
        (_video_only(), "no audio stream"),
        (_empty_wav(), "no audio samples"),
    ]:
        with pytest.raises(InvalidRequestError, match=message) as info:
            decode_audio(bad, 16000, 60)
        assert info.value.param == "file"
    with pytest.raises(InvalidRequestError, match=r"longer than .* 0\.5 seconds"):
        decode_audio(wav_bytes(1.0), 16000, 0.5)


def _video_only() -> bytes:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=1)
        stream.width = stream.height = 16
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame.reformat(format=stream.pix_fmt)), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def _empty_wav() -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
    return buf.getvalue()


def test_windows_cover_the_samples() -> None:
    spans = list(windows(np.zeros(16000 * 65, np.float32), 16000))
    assert [(w.start, w.end) for w in spans] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert sum(w.samples.shape[0] for w in spans) == 16000 * 65


async def test_whisper_transcribes_translates_and_batches(whisper: Seq2SeqSpeechModel) -> None:
    assert whisper.can_translate and whisper.max_input_tokens == 32
    assert whisper.count_tokens("hello world") > 0 and whisper.memory_bytes() > 0
    audio = wav_bytes(2.0)
    one = await whisper.transcribe(audio, TranscriptionOptions())
    assert one.text and one.tokens == len(one.segments[0].tokens) > 0
    assert one.duration == pytest.approx(2.0)
    # Greedy decoding is deterministic whether a window runs alone or batched with others.
    many = await asyncio.gather(
        *(whisper.transcribe(audio, TranscriptionOptions()) for _ in range(3))
    )
    assert {t.text for t in many} == {one.text}
    sampled = TranscriptionOptions(
        task="translate", language="DE", prompt="hello world", temperature=0.8
    )
    mixed = await asyncio.gather(
        whisper.transcribe(audio, sampled), whisper.transcribe(audio, TranscriptionOptions())
    )
    assert mixed[0].language == "DE" and mixed[1].text == one.text


async def test_whisper_option_checks(
    whisper: Seq2SeqSpeechModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(options: TranscriptionOptions) -> str | None:
        with pytest.raises(InvalidRequestError) as info:
            whisper.check_options(options)
        return info.value.param

    assert refused(TranscriptionOptions(language="xx")) == "language"
    assert refused(TranscriptionOptions(prompt="<|en|> sneaky")) == "prompt"
    # An English-only Whisper knows no language tokens: "en" is fine, others are not.
    monkeypatch.setattr(whisper, "_languages", {})
    whisper.check_options(TranscriptionOptions(language="en"))
    assert refused(TranscriptionOptions(language="de")) == "language"
    assert not whisper.can_translate
    assert refused(TranscriptionOptions(task="translate")) == "model"
    monkeypatch.setattr(whisper, "_whisper", False)
    assert refused(TranscriptionOptions(prompt="hi")) == "prompt"
    assert refused(TranscriptionOptions(language="en")) == "language"


async def test_ctc_windows_long_audio_and_refuses_what_it_cannot_do(ctc: CTCSpeechModel) -> None:
    assert not ctc.can_translate and ctc.max_input_tokens == 1500
    result = await ctc.transcribe(wav_bytes(31.0), TranscriptionOptions())
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 30.0), (30.0, 31.0)]
    assert result.text == " ".join(s.text for s in result.segments if s.text)
    for options, param in [
        (TranscriptionOptions(language="en"), "language"),
        (TranscriptionOptions(prompt="x"), "prompt"),
        (TranscriptionOptions(temperature=0.3), "temperature"),
        (TranscriptionOptions(task="translate"), "model"),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            await ctc.transcribe(wav_bytes(0.5), options)
        assert info.value.param == param


async def test_a_failing_batch_fails_its_callers_only(
    ctc: CTCSpeechModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(samples: list[np.ndarray], options: TranscriptionOptions) -> list[object]:
        raise RuntimeError("boom")

    monkeypatch.setattr(ctc, "_transcribe_windows", broken)
    with pytest.raises(InferenceError, match="failed on this audio \\(RuntimeError\\)"):
        await ctc.transcribe(wav_bytes(0.5), TranscriptionOptions())


async def test_start_is_idempotent_and_close_refuses_new_work(
    tiny_audio_models: TinyAudioModels,
) -> None:
    model = await _load(str(tiny_audio_models.ctc))
    await model.start()
    assert model.queue_depth == 0
    await model.aclose()
    with pytest.raises(ShuttingDownError):
        await model.transcribe(wav_bytes(0.5), TranscriptionOptions())
