"""``hfserve bench`` against a real server that lists an embedding model first (issue 14, item 8)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.fixtures.tiny_models import TinyModels
from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bench(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hfserve", "bench", "--url", url, "-c", "2", "-n", "4", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith(("HFSERVE_", "OPENAI_"))}
        | {"COLUMNS": "200"},
    )


def test_bench_picks_the_model_that_serves_its_endpoint(
    start_server: StartServer, tiny_models: TinyModels
) -> None:
    server = start_server(
        "--no-auth", models=[f"embed={tiny_models.bert}", f"chat={tiny_models.llama}"]
    )
    chat = _bench(server.url, "--max-tokens", "4")
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert "/v1/chat/completions (chat)" in chat.stdout
    assert re.search(r"Requests ok\s+\S*\s*4\b", chat.stdout), chat.stdout

    embed = _bench(server.url, "--model", "embed")
    assert embed.returncode == 0, embed.stdout + embed.stderr
    assert "/v1/embeddings (embed)" in embed.stdout

    refused = _bench(server.url, "--model", "embed", "--endpoint", "chat")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: model embed (embeddings) does not serve chat; pass --endpoint or another "
        "--model (embed (embeddings); chat (chat, completions))"
    )


def test_bench_says_which_models_serve_what_when_nothing_fits(
    start_server: StartServer, tiny_models: TinyModels
) -> None:
    server = start_server("--no-auth", models=[f"sentiment={tiny_models.bert_cls}"])
    result = _bench(server.url)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: no model at {server.url} serves chat: "
        "sentiment (text-classification: no bench endpoint)"
    )
