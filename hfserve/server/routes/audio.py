"""``/v1/audio/transcriptions`` and ``/v1/audio/translations``: OpenAI's speech-to-text API.

The request is a multipart form (``file`` plus fields); the answer is JSON, plain text, SubRip
(``srt``) or WebVTT (``vtt``) subtitles, or ``verbose_json`` with timed segments.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Literal

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from hfserve.errors import InvalidRequestError
from hfserve.server.requests import (
    charge_tokens,
    json_response,
    load_model,
    run_until_disconnect,
    server_state,
)
from hfserve.server.schemas import TranscriptionRequest, parse_body
from hfserve.skills.base import (
    Transcription,
    TranscriptionModel,
    TranscriptionOptions,
    TranscriptSegment,
)

__all__ = ["format_srt", "format_vtt", "transcriptions", "translations"]


async def transcriptions(request: Request) -> Response:
    """Transcribe an uploaded audio file in its own language."""
    return await _speech_to_text(request, "transcribe", "/v1/audio/transcriptions")


async def translations(request: Request) -> Response:
    """Translate the speech of an uploaded audio file into English text."""
    return await _speech_to_text(request, "translate", "/v1/audio/translations")


async def _speech_to_text(
    request: Request, task: Literal["transcribe", "translate"], endpoint: str
) -> Response:
    state = server_state(request)
    body = parse_body(TranscriptionRequest, await _read_form(request))
    model = await load_model(state, request, body.model, TranscriptionModel, endpoint)  # type: ignore[type-abstract]
    options = TranscriptionOptions(
        task=task,
        language=body.language,
        prompt=body.prompt,
        temperature=body.temperature,
        max_seconds=state.settings.max_audio_seconds,
    )
    result = await run_until_disconnect(request, model.transcribe(body.file, options))
    await charge_tokens(state, request, result.tokens)
    return _render(result, body, task)


async def _read_form(request: Request) -> dict[str, Any]:
    """The form's fields, ``name[]`` fields as lists, and the bytes of the ``file`` part.

    Raises:
        InvalidRequestError: not a multipart form, or no ``file`` part.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise InvalidRequestError(
            f"unsupported content-type {ctype or 'none'!r}: send multipart/form-data with a "
            "file part",
            param="file",
        )
    data: dict[str, Any] = {}
    async with request.form(max_files=1, max_fields=64) as form:
        for key, value in form.multi_items():
            if key == "file":
                continue
            if isinstance(value, UploadFile):
                raise InvalidRequestError(f"{key} must be a form field, not a file", param=key)
            if key.endswith("[]"):
                data.setdefault(key[:-2], []).append(value)
            else:
                data[key] = value
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("a file part named 'file' is required", param="file")
        data["file"] = await upload.read()
    return data


def _render(result: Transcription, body: TranscriptionRequest, task: str) -> Response:
    fmt = body.response_format
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(format_srt(result.segments))
    if fmt == "vtt":
        return Response(format_vtt(result.segments), media_type="text/vtt")
    usage = {"type": "duration", "seconds": math.ceil(result.duration)}
    if fmt == "json":
        return json_response({"text": result.text, "usage": usage})
    return json_response(
        {
            "task": task,
            "language": result.language,
            "duration": result.duration,
            "text": result.text,
            "segments": [_segment(s, body.temperature) for s in result.segments],
            "usage": usage,
        }
    )


def _segment(segment: TranscriptSegment, temperature: float) -> dict[str, Any]:
    encoded = segment.text.encode("utf-8")
    # Whisper's own measure of repetitive (hallucinated) text: text size over zlib size.
    ratio = len(encoded) / len(zlib.compress(encoded)) if encoded else 0.0
    return {
        "id": segment.id,
        "seek": round(segment.start * 100),
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": segment.tokens,
        "temperature": temperature,
        "compression_ratio": ratio,
    }


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def format_srt(segments: list[TranscriptSegment]) -> str:
    """SubRip subtitles: numbered cues, ``HH:MM:SS,mmm`` times; empty segments left out."""
    cues = [s for s in segments if s.text]
    return "".join(
        f"{n}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n\n"
        for n, s in enumerate(cues, start=1)
    )


def format_vtt(segments: list[TranscriptSegment]) -> str:
    """WebVTT subtitles: the ``WEBVTT`` header, then ``HH:MM:SS.mmm`` cues."""
    cues = "".join(
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n\n"
        for s in segments
        if s.text
    )
    return "WEBVTT\n\n" + cues
