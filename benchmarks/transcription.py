"""Transcription speed: real-time factor of ``/v1/audio/transcriptions`` at c=1 and c=4.

The model has whisper-tiny's shape (39M parameters: 4+4 layers, d_model 384, 51,865-token
vocabulary, 80 mel bins) with random weights, built offline. Random weights never stop on
their own, so each 30 s window decodes up to 128 tokens (about what 30 s of speech yields);
ids outside the small trained tokenizer are suppressed, so the full 51,865-way output layer
is still computed at every step.

Each request uploads a 30 s WAV (one window). Requests run closed-loop with ``httpx`` (its
cost is negligible next to seconds-long requests). Reported: audio seconds transcribed per
wall-clock second, and the real-time factor (RTF = processing time / audio time; below 1 is
faster than real time): at c=1 the latency of one file over its length, at c=4 the wall time
over all audio processed. The offline ceiling is ``model.generate`` over 4 windows at once.

    python benchmarks/transcription.py [--smoke]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from _common import LOOPBACK, Report, Target, free_port, hfserve_serve, parse_args, temp_dir
from _whisper import FULL, SMOKE, build_whisper, tone_wav

MODEL = "whisper"
CLIP_SECONDS = 30.0
MAX_TOKENS = 128
SERVED, OFFLINE = "hfserve", "offline generate (ceiling)"


def _offline(folder: Path, clips: int) -> float:
    """Audio seconds per second of ``generate`` over ``clips`` windows in one batch."""
    import numpy as np
    import torch
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    model = AutoModelForSpeechSeq2Seq.from_pretrained(str(folder)).eval()
    rate = processor.feature_extractor.sampling_rate
    t = np.arange(int(CLIP_SECONDS * rate)) / rate
    audio = [(0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)] * clips
    features = processor.feature_extractor(audio, sampling_rate=rate, return_tensors="pt")
    with torch.inference_mode():
        model.generate(features.input_features[:1], task="transcribe", do_sample=False)  # warm up
        started = time.perf_counter()
        model.generate(features.input_features, task="transcribe", do_sample=False)
    return clips * CLIP_SECONDS / (time.perf_counter() - started)


async def _drive(url: str, audio: bytes, concurrency: int, total: int) -> tuple[float, list[float]]:
    """Wall time of ``total`` uploads with ``concurrency`` in flight, and each latency."""
    latencies: list[float] = []
    queue = list(range(total))
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> None:
            while queue:
                queue.pop()
                started = time.perf_counter()
                response = await client.post(
                    url,
                    data={"model": MODEL, "response_format": "verbose_json"},
                    files={"file": ("clip.wav", audio, "audio/wav")},
                )
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    return time.perf_counter() - started, latencies


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement and write ``transcription.json`` / ``transcription.png``."""
    args = parse_args(__doc__ or "", argv)
    levels = (1, 4)
    report = Report(
        "transcription",
        "Transcription: whisper-tiny-shaped model, 30 s clips",
        "audio s/s",
        args.smoke,
    )
    tokens = 8 if args.smoke else MAX_TOKENS
    with temp_dir("hfserve-transcription-") as tmp:
        folder = tmp / "whisper"
        build_whisper(folder, SMOKE if args.smoke else FULL, tokens)
        ceiling = _offline(folder, 4)
        audio = tone_wav(CLIP_SECONDS)
        port = free_port()
        server = hfserve_serve({MODEL: folder}, port, "--no-auth")
        url = f"http://{LOOPBACK}:{port}/v1/audio/transcriptions"
        with server:
            asyncio.run(_drive(url, audio, 1, 1))  # warm up
            for concurrency in levels:
                total = concurrency * (1 if args.smoke else 2)
                wall, latencies = asyncio.run(_drive(url, audio, concurrency, total))
                throughput = total * CLIP_SECONDS / wall
                rtf = sorted(latencies)[len(latencies) // 2] if concurrency == 1 else wall / total
                report.add(
                    SERVED,
                    throughput,
                    group=f"c={concurrency}",
                    rtf=rtf / CLIP_SECONDS,
                    requests=total,
                )
    for concurrency in levels:
        report.add(OFFLINE, ceiling, group=f"c={concurrency}")
    report.add_ratios(OFFLINE)
    rtf_1 = report.rows[0]["rtf"]
    report.targets.append(Target("RTF at c=1 (reported)", rtf_1, 1.0, "", higher_is_better=False))
    c4 = report.measured(SERVED, "c=4") / report.measured(SERVED, "c=1")
    report.targets.append(Target("c=4 throughput over c=1 (batching gain)", c4, 1.0))
    report.notes.append(
        f"{CLIP_SECONDS:g} s WAV per request, verbose_json, up to {tokens} tokens per window; "
        "closed loop with httpx; RTF at c=1 is the median latency over the clip length, at c=4 "
        "the wall time per clip over the clip length"
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
