"""The README Quickstart's server: `hfserve serve` with no model serves the offline demo."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.integration.conftest import StartServer

pytestmark = pytest.mark.integration


def test_plain_hfserve_serve_serves_the_offline_demo(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server("--no-auth", models=[], env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    client = openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120
    )
    assert {m.id for m in client.models.list()} == {"all-minilm-l6-v2", "demo-chat"}
    chat = client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8
    )
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    vectors = client.embeddings.create(model="all-minilm-l6-v2", input=["a sentence", "another"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    assert (tmp_path / "cache" / "hfserve" / "demo-chat").is_dir()  # built once, cached
    assert server.stop() == 0
