"""Every file in examples/ runs as written against a live ``hfserve serve`` on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hfserve.core.keystore import KeyStore
from tests.fixtures.plugins import install_offline
from tests.fixtures.tiny_models import HERMES_TOOLS_TEMPLATE
from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=os.environ | env, timeout=120, check=False
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_openai_client_example_with_an_api_key(start_server: StartServer, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    _, key = KeyStore(keys).create("examples")
    server = start_server(keys_file=keys)
    env = {
        "HFSERVE_BASE_URL": server.url + "/v1",
        "HFSERVE_API_KEY": key,
        "HFSERVE_CHAT_MODEL": "tiny-llama",
        "HFSERVE_EMBEDDING_MODEL": "tiny-bert",
    }
    out = _run([sys.executable, str(EXAMPLES / "openai_client.py")], env).stdout

    assert "model: tiny-llama" in out and "model: tiny-cls" in out
    assert "chat finish_reason: " in out
    assert "completion tokens" in out and "stream usage: " in out
    assert "embeddings: 2 vectors of " in out

    # The example really needs its key: without it the server refuses the first call.
    refused = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_client.py")],
        capture_output=True,
        text=True,
        env=os.environ | env | {"HFSERVE_API_KEY": "hf-wrong"},
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0
    assert "AuthenticationError" in refused.stderr


def test_curl_example(start_server: StartServer) -> None:
    server = start_server()
    env = {
        "HFSERVE_URL": server.url,
        "HFSERVE_CHAT_MODEL": "tiny-llama",
        "HFSERVE_EMBEDDING_MODEL": "tiny-bert",
        "HFSERVE_CLASSIFICATION_MODEL": "tiny-cls",
    }
    out = _run(["bash", str(EXAMPLES / "curl.sh")], env).stdout

    assert '"status":"ready"' in out.replace(" ", "")
    assert '"object":"chat.completion"' in out
    assert "data: [DONE]" in out
    assert '"object":"embedding"' in out
    assert '"object":"classification"' in out
    assert 'hfserve_requests_total{model="tiny-llama",route="/v1/chat/completions"' in out


@pytest.fixture(scope="module")
def keyword_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/custom_skill pip-installed offline into a site dir, as a user would install it."""
    target = tmp_path_factory.mktemp("keyword-site")
    # Build from a copy: pip would otherwise leave build/ artefacts in the examples folder.
    source = tmp_path_factory.mktemp("keyword-src") / "custom_skill"
    shutil.copytree(EXAMPLES / "custom_skill", source)
    return install_offline(source, target)


def test_custom_skill_is_listed_once_installed(keyword_plugin: Path) -> None:
    env = {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(keyword_plugin), os.environ.get("PYTHONPATH")])
        )
    }
    listed = _run([sys.executable, "-m", "hfserve", "skills", "list", "--json"], env).stdout
    skills = {s["name"]: s for s in json.loads(listed)}
    assert skills["keyword-classifier"]["source"] == "hfserve-keyword-skill"
    assert skills["keyword-classifier"]["architectures"] == ["KeywordClassifier"]

    found = _run(
        [
            sys.executable,
            "-m",
            "hfserve",
            "skills",
            "search",
            "--architecture",
            "KeywordClassifier",
            "--json",
        ],
        env,
    ).stdout
    assert [s["name"] for s in json.loads(found)] == ["keyword-classifier"]


def test_custom_skill_serves_its_example_model(
    keyword_plugin: Path, start_server: StartServer
) -> None:
    env = {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(keyword_plugin), os.environ.get("PYTHONPATH")])
        )
    }
    model = EXAMPLES / "custom_skill" / "example_model"
    server = start_server(models=[f"sentiment={model}"], env=env)

    response = httpx.post(
        server.url + "/v1/classifications",
        json={"model": "sentiment", "input": ["I love it, great and fast", "slow and broken"]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["label"] for d in data] == ["positive", "negative"]
    assert data[0]["score"] > 0.5
    assert response.json()["usage"]["prompt_tokens"] == 9


def test_structured_output_example(start_server: StartServer) -> None:
    server = start_server()
    env = {"HFSERVE_BASE_URL": server.url + "/v1", "HFSERVE_CHAT_MODEL": "tiny-llama"}
    out = _run([sys.executable, str(EXAMPLES / "structured_output.py")], env).stdout

    parsed = re.search(r"parsed: mood=(\w+) recommended=(True|False)", out)
    assert parsed is not None and parsed.group(1) in {"happy", "sad", "neutral"}, out
    streamed = re.search(r"streamed JSON: (.*)", out)
    assert streamed is not None
    assert streamed.group(1) == str(
        {"mood": parsed.group(1), "recommended": parsed.group(2) == "True"}
    )


def test_tool_calls_example(start_server: StartServer) -> None:
    server = start_server("--chat-template", f"tiny-llama={HERMES_TOOLS_TEMPLATE}")
    env = {"HFSERVE_BASE_URL": server.url + "/v1", "HFSERVE_CHAT_MODEL": "tiny-llama"}
    out = _run([sys.executable, str(EXAMPLES / "tool_calls.py")], env).stdout

    assert "finish_reason: tool_calls" in out
    call = re.search(r"tool call: get_weather\((.*)\) id=call_\w+", out)
    assert call is not None, out
    assert set(json.loads(call.group(1))) == {"unit", "tomorrow"}
    assert "final answer: " in out
