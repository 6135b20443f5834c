"""Decoding uploaded audio with PyAV: any container and codec FFmpeg reads, as mono float32 at
the model's sampling rate, in 30-second windows.

PyAV bundles FFmpeg, so wav, flac, mp3, ogg (vorbis, opus), m4a and webm all decode the same
way and resample with FFmpeg's own resampler; nothing here parses a format by hand.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hfserve.errors import InvalidRequestError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["WINDOW_SECONDS", "AudioWindow", "decode_audio", "windows"]

# Whisper's encoder sees exactly 30 s; CTC models get the same windows so long files never
# need one huge forward pass.
WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class AudioWindow:
    """Samples of one window and where it starts in the file (seconds)."""

    samples: np.ndarray
    start: float
    end: float


def decode_audio(data: bytes, rate: int, max_seconds: float) -> np.ndarray:
    """The first audio stream of ``data`` as mono float32 samples at ``rate`` Hz.

    Raises:
        InvalidRequestError: (``param="file"``) empty, not audio, undecodable, or longer than
            ``max_seconds``.
    """
    import av
    import numpy as np

    if not data:
        raise InvalidRequestError("the uploaded file is empty", param="file")
    limit = int(max_seconds * rate)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise InvalidRequestError("the uploaded file has no audio stream", param="file")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    total = _append(chunks, out.to_ndarray(), total, limit, max_seconds)
            for out in resampler.resample(None):
                total = _append(chunks, out.to_ndarray(), total, limit, max_seconds)
    except av.FFmpegError as exc:
        raise InvalidRequestError(
            f"the uploaded file is not audio this server can decode ({type(exc).__name__})",
            param="file",
        ) from None
    if total == 0:
        raise InvalidRequestError("the uploaded file holds no audio samples", param="file")
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _append(
    chunks: list[np.ndarray], frame: np.ndarray, total: int, limit: int, seconds: float
) -> int:
    samples = frame.reshape(-1)
    total += samples.shape[0]
    if total > limit:
        # Stop decoding as soon as the limit is passed: a huge file costs no more than the limit.
        raise InvalidRequestError(
            f"the audio is longer than this server's limit of {seconds:g} seconds", param="file"
        )
    chunks.append(samples)
    return total


def windows(
    samples: np.ndarray, rate: int, seconds: float = WINDOW_SECONDS
) -> Iterator[AudioWindow]:
    """Consecutive windows of at most ``seconds`` covering ``samples``."""
    size = max(1, int(seconds * rate))
    for start in range(0, samples.shape[0], size):
        chunk = samples[start : start + size]
        yield AudioWindow(chunk, start / rate, (start + chunk.shape[0]) / rate)
