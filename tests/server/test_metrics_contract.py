"""The metrics a live server exports match the names the dashboard, alerts and HPA rely on."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from hfserve.core.keystore import KeyStore
from hfserve.deploy.metric_names import METRIC_NAMES, METRIC_PREFIX
from tests.deploy.conftest import DEPLOYMENTS

_NAME = re.compile(rf"\b{METRIC_PREFIX}[a-z0-9_]+")


def _live_series(client: TestClient) -> set[str]:
    text = client.get("/metrics").text
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        # A labelled counter nobody has incremented yet is declared (HELP/TYPE) with no samples.
        names.add(family.name + "_total" if family.type == "counter" else family.name)
        for sample in family.samples:
            names.add(sample.name)
    return names


def _exercise(client: TestClient, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    # Enough tokens for several stream chunks: inter-token latency needs two of them, and on a
    # loaded machine the engine can hand a short answer over in a single chunk.
    chat = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 24,
    }
    client.post(
        "/v1/chat/completions", json=chat | {"stream": True, "ignore_eos": True}, headers=headers
    )
    for _ in range(2):  # miss then hit
        client.post("/v1/embeddings", json={"model": "tiny-bert", "input": "x"}, headers=headers)
    for _ in range(3):  # the third is rate limited
        client.get("/v1/models", headers=headers)


def test_every_contract_metric_is_exported_by_a_live_server(
    make_client: Any, tmp_path: Any
) -> None:
    _, key = KeyStore(tmp_path / "keys.json").create("metrics", rpm=5)
    client = make_client()
    _exercise(client, key)
    live = _live_series(client)
    missing = [
        name
        for name in METRIC_NAMES
        if not any(s == name or s.startswith(name + "_") for s in live)
    ]
    assert missing == []


def test_dashboard_and_alerts_query_series_a_live_server_exports(
    make_client: Any, tmp_path: Any
) -> None:
    _, key = KeyStore(tmp_path / "keys.json").create("metrics", rpm=5)
    client = make_client()
    _exercise(client, key)
    live = _live_series(client)
    dashboard: dict[str, Any] = json.loads(
        (DEPLOYMENTS / "grafana" / "dashboards" / "hfserve.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append((DEPLOYMENTS / "prometheus" / "alerts.yml").read_text())
    used = {name for expr in exprs for name in _NAME.findall(expr)}
    assert used
    assert sorted(used - live) == []
