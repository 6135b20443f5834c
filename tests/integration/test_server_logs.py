"""A real ``hfserve serve``'s log: one format for every library, no progress bars, the banner."""

from __future__ import annotations

import json
import os
import re

import httpx
import pytest

from tests.integration.conftest import StartServer

pytestmark = pytest.mark.integration

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S"
)
BOX = ("╭", "│", "╰")


def _exercise(url: str) -> None:
    """Load-time and generation-time logs: a chat completion and an embedding."""
    assert httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    embedded = httpx.post(url + "/v1/embeddings", json={"model": "tiny-bert", "input": "x"})
    assert embedded.status_code == 200


def test_text_log_has_one_format_and_no_progress_bars(start_server: StartServer) -> None:
    # --device auto: the banner must show what auto resolved to on this CPU-only machine.
    # Continuous batching (direct decoding off), so transformers' own logger has lines to log.
    server = start_server("--no-auth", "--device", "auto", env={"HFSERVE_DIRECT_DECODE": "false"})
    _exercise(server.url)
    assert server.stop() == 0
    log = server.log()
    assert "\r" not in log and "it/s]" not in log and "%|" not in log  # tqdm's marks
    banner = [line for line in log.splitlines() if line.startswith(BOX)]
    lines = [line for line in log.splitlines() if line and not line.startswith(BOX)]
    assert any("cpu / float32" in line for line in banner), banner
    assert any("tiny-llama  text-generation  pinned, loads at start" in b for b in banner)
    bad = [line for line in lines if not LINE.match(line)]
    assert bad == [], bad
    loggers = {LINE.match(line).group(0).rsplit(" ", 2)[1] for line in lines}  # type: ignore[union-attr]
    # uvicorn, hfserve and transformers' continuous-batching logger all in the one format.
    assert {"uvicorn.error:", "hfserve.server:", "ContinuousBatchingLogger:"} <= loggers
    messages = [line.split(" ", 2)[2] for line in lines]
    assert len(messages) == len(set(messages)), "a line was logged twice"


def test_json_log_is_one_object_per_line(start_server: StartServer) -> None:
    server = start_server(
        "--no-auth", "--log-format", "json", env={"HFSERVE_DIRECT_DECODE": "false"}
    )
    _exercise(server.url)
    assert server.stop() == 0
    records = [json.loads(line) for line in server.log().splitlines() if line]
    assert {"time", "level", "logger", "message", "pid"} <= set(records[0])
    messages = [r["message"] for r in records]
    assert "Device cpu / float32  (requested)" in messages
    # torch's threads on a CPU: the usable CPUs, waiting threads asleep, by default.
    from hfserve.hardware import auto_torch_threads, usable_cpus

    threads = os.environ.get("OMP_NUM_THREADS") or auto_torch_threads(usable_cpus())
    if "OMP_WAIT_POLICY" in os.environ:
        wait = f"{os.environ['OMP_WAIT_POLICY'].lower()} wait"
        if "GOMP_SPINCOUNT" in os.environ:
            wait += f" after {os.environ['GOMP_SPINCOUNT']} spins"
    else:
        wait = "passive wait after 10000 spins"
    assert f"Threads {threads} torch, {wait}" in messages
    assert any(m.startswith("Models tiny-llama  text-generation") for m in messages)
    assert {"uvicorn.error", "hfserve.access", "ContinuousBatchingLogger"} <= {
        r["logger"] for r in records
    }
    access = next(r for r in records if r["logger"] == "hfserve.access")
    assert "path=/v1/chat/completions" in access["message"]
