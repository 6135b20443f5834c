"""``hfserve serve --models-dir``: models on demand, evicted for real, listed without paths."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.fixtures.tiny_models import TinyModels
from tests.integration.conftest import StartServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _models_dir(root: Path, **models: Path) -> Path:
    folder = root / "models"
    folder.mkdir()
    for name, source in models.items():
        (folder / name).symlink_to(source, target_is_directory=True)
    return folder


def _states(url: str) -> dict[str, str]:
    return {card["id"]: card["state"] for card in httpx.get(url + "/v1/models").json()["data"]}


def _counter(url: str, name: str) -> dict[str, float]:
    """Samples of one counter by their label text, from a live /metrics scrape."""
    text = httpx.get(url + "/metrics").text
    return {
        labels: float(value)
        for labels, value in re.findall(rf"^{name}\{{(.*?)\}} (\S+)$", text, re.MULTILINE)
    }


def test_three_models_cycle_through_one_slot(
    start_server: StartServer, tiny_models: TinyModels, tmp_path: Path
) -> None:
    folder = _models_dir(
        tmp_path, chat=tiny_models.llama, emb=tiny_models.bert, cls=tiny_models.bert_cls
    )
    server = start_server("--models-dir", str(folder), "--max-loaded-models", "1", models=[])
    body = httpx.get(server.url + "/v1/models").text
    assert str(tmp_path) not in body and str(tiny_models.root) not in body  # no server paths
    cards = {card["id"]: card for card in httpx.get(server.url + "/v1/models").json()["data"]}
    assert set(cards) == {"chat", "cls", "emb"}
    for card in cards.values():
        assert card["state"] == "available" and card["pinned"] is False and "source" not in card
    assert {alias: card["task"] for alias, card in cards.items()} == {
        "chat": "text-generation",
        "cls": "text-classification",
        "emb": "embeddings",
    }

    client = _sdk(server.url)
    for _ in range(2):
        vectors = client.embeddings.create(model="emb", input=["hello"]).data
        assert len(vectors[0].embedding) == 32
        assert _states(server.url) == {"chat": "available", "cls": "available", "emb": "loaded"}
        labels = httpx.post(
            server.url + "/v1/classifications", json={"model": "cls", "input": ["good"]}, timeout=60
        )
        assert labels.status_code == 200, labels.text
        assert _states(server.url)["cls"] == "loaded"
        chat = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert chat.choices[0].message.role == "assistant"
        assert _states(server.url) == {"chat": "loaded", "cls": "available", "emb": "available"}

    loads = _counter(server.url, "hfserve_model_loads_total")
    assert sum(loads.values()) == 6
    evictions = _counter(server.url, "hfserve_model_evictions_total")
    assert sum(evictions.values()) == 5
    assert evictions['model="emb",reason="lru"'] == 2
    assert evictions['model="cls",reason="lru"'] == 2
    assert evictions['model="chat",reason="lru"'] == 1
    assert "unloaded model emb (lru)" in server.log()


def _big_bert(tiny: TinyModels, target: Path) -> int:
    """A ~75 MB BERT with the tiny BERT's tokenizer; its weight bytes."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny.bert)
    config.update({"hidden_size": 512, "num_hidden_layers": 6, "intermediate_size": 2048})
    config.num_attention_heads = 8
    model = BertModel(config)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny.bert).save_pretrained(target)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _big_llama(tiny: TinyModels, target: Path) -> int:
    """A ~75 MB Llama with the tiny Llama's tokenizer and chat template; its weight bytes."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny.llama)
    config.update({"hidden_size": 512, "num_hidden_layers": 6, "intermediate_size": 1376})
    config.update({"num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 64})
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny.llama).save_pretrained(target)
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("kind", ["embeddings", "generation"])
def test_rss_falls_after_an_eviction(
    start_server: StartServer, tiny_models: TinyModels, tmp_path: Path, kind: str
) -> None:
    # Generation also starts the engine's thread and allocates its KV cache: both must go.
    build, small = (
        (_big_bert, tiny_models.bert) if kind == "embeddings" else (_big_llama, tiny_models.llama)
    )
    size = build(tiny_models, tmp_path / "big-model")
    assert size > 60_000_000
    folder = _models_dir(tmp_path, big=tmp_path / "big-model", small=small)
    server = start_server("--models-dir", str(folder), "--max-loaded-models", "1", models=[])
    process = psutil.Process(server.proc.pid)
    client = _sdk(server.url)

    def use(model: str) -> int:
        if kind == "embeddings":
            client.embeddings.create(model=model, input=["hello world"])
        else:
            client.completions.create(model=model, prompt="hello", max_tokens=4)
        return int(process.memory_info().rss)

    use("small")  # torch, transformers and the tokenizer stack are in memory from here on
    base = use("small")
    loaded = use("big")
    evicted = use("small")
    print(f"RSS: base {base >> 20} MiB, big loaded {loaded >> 20} MiB, evicted {evicted >> 20} MiB")
    assert loaded - base > size * 0.8
    # The big model's weights went back to the OS, not just to the allocator's free lists.
    assert loaded - evicted > size * 0.8
    assert _states(server.url) == {"big": "available", "small": "loaded"}


def test_models_added_later_are_offered_and_failures_are_503(
    start_server: StartServer, tiny_models: TinyModels, tmp_path: Path
) -> None:
    folder = _models_dir(tmp_path, emb=tiny_models.bert)
    server = start_server("--models-dir", str(folder), models=[])
    shutil.copytree(tiny_models.bert_cls, folder / "late-cls")
    broken = folder / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchArchitecture"]}')
    assert _states(server.url) == {
        "broken": "available",
        "emb": "available",
        "late-cls": "available",
    }
    answer = httpx.post(
        server.url + "/v1/classifications",
        json={"model": "late-cls", "input": ["x"]},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    failed = httpx.post(
        server.url + "/v1/embeddings", json={"model": "broken", "input": "x"}, timeout=60
    )
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert error["code"] == "model_load_failed"
    assert "cannot load model 'broken'" in error["message"]
    assert "NoSuchArchitecture" in error["message"]


def _slow_echo(folder: Path, name: str, gate: Path) -> None:
    model = folder / name
    model.mkdir()
    os.mkfifo(gate)
    config = {"architectures": ["EchoModel"], "gate": str(gate)}
    (model / "config.json").write_text(json.dumps(config))


def _embed(url: str, model: str) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json={"model": model, "input": "x"}, timeout=60)


def test_a_timed_out_load_is_closed_late_and_does_not_hold_up_shutdown(
    start_server: StartServer, echo_plugin: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    _slow_echo(folder, "slow", tmp_path / "slow-gate")
    _slow_echo(folder, "stuck", tmp_path / "stuck-gate")  # never released
    server = start_server("--models-dir", str(folder), models=[], env={"HFSERVE_LOAD_TIMEOUT": "1"})
    timed_out = _embed(server.url, "slow")
    assert timed_out.status_code == 503
    assert timed_out.json()["error"]["code"] == "model_load_failed"
    assert "took longer than 1s" in timed_out.json()["error"]["message"]
    assert _states(server.url)["slow"] == "loading"
    again = _embed(server.url, "slow")  # no second load beside the one still running
    assert again.status_code == 503 and again.json()["error"]["code"] == "unavailable"
    assert "Retry-After" in again.headers

    with (tmp_path / "slow-gate").open("wb") as gate:  # the slow load now finishes
        gate.write(b"go")
    (tmp_path / "slow-gate").unlink()
    deadline = time.monotonic() + 30
    while _states(server.url)["slow"] != "available":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert "model slow finished loading after its load was abandoned; closing it" in server.log()
    assert _embed(server.url, "slow").status_code == 200  # a fresh load, served

    assert _embed(server.url, "stuck").status_code == 503  # its thread never ends
    assert server.stop(timeout=30) == 0  # and shutdown does not wait for it
