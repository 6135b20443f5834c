"""SubRip and WebVTT rendering of transcript segments, checked with the srt and webvtt parsers."""

from __future__ import annotations

import io
from datetime import timedelta

import srt
import webvtt

from hfserve.server.routes.audio import _segment, format_srt, format_vtt
from hfserve.skills.base import TranscriptSegment

SEGMENTS = [
    TranscriptSegment(0, 0.0, 30.0, "first window", [1, 2]),
    TranscriptSegment(1, 30.0, 60.0, "", []),
    TranscriptSegment(2, 60.0, 3725.5, "after an hour", [3]),
]


def test_srt_numbers_cues_and_skips_empty_segments() -> None:
    cues = list(srt.parse(format_srt(SEGMENTS)))
    assert [(c.index, c.content) for c in cues] == [(1, "first window"), (2, "after an hour")]
    assert cues[1].start == timedelta(seconds=60)
    assert cues[1].end == timedelta(hours=1, minutes=2, seconds=5, milliseconds=500)
    assert format_srt([]) == ""


def test_vtt_has_its_header_and_dotted_times() -> None:
    text = format_vtt(SEGMENTS)
    assert text.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    assert [(c.start, c.end, c.text) for c in captions] == [
        ("00:00:00.000", "00:00:30.000", "first window"),
        ("00:01:00.000", "01:02:05.500", "after an hour"),
    ]


def test_verbose_segments_carry_seek_tokens_and_compression_ratio() -> None:
    full = _segment(SEGMENTS[0], 0.0)
    assert full["seek"] == 0 and full["tokens"] == [1, 2] and full["compression_ratio"] > 0
    repetitive = _segment(TranscriptSegment(0, 30.0, 60.0, "la " * 100), 0.2)
    assert repetitive["seek"] == 3000 and repetitive["compression_ratio"] > 5
    assert _segment(SEGMENTS[1], 0.0)["compression_ratio"] == 0.0
