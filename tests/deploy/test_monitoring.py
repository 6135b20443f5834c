"""Dashboard, alerts and autoscaler use only exported metric names; promtool accepts the rules."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from hfserve.deploy.metric_names import HISTOGRAM_METRICS, METRIC_NAMES, METRIC_PREFIX
from hfserve.settings import Settings
from tests.deploy.conftest import DEPLOYMENTS, Runner

PROMETHEUS = DEPLOYMENTS / "prometheus"
DASHBOARD = DEPLOYMENTS / "grafana" / "dashboards" / "hfserve.json"
_NAME = re.compile(rf"\b{METRIC_PREFIX}[a-z0-9_]+")


def _allowed(series: str) -> bool:
    if series in METRIC_NAMES:
        return True
    base, _, suffix = series.rpartition("_")
    return base in HISTOGRAM_METRICS and suffix in {"bucket", "sum", "count"}


def _dashboard_exprs() -> dict[str, list[str]]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def test_dashboard_queries_use_only_exported_metrics() -> None:
    exprs = [e for group in _dashboard_exprs().values() for e in group]
    used = {name for expr in exprs for name in _NAME.findall(expr)}
    assert used, "the dashboard queries no hfserve metric"
    assert {name for name in used if not _allowed(name)} == set()


@pytest.mark.parametrize(
    ("title", "metric"),
    [
        ("Request rate", "hfserve_requests_total"),
        ("Request latency percentiles", "hfserve_request_duration_seconds_bucket"),
        ("Time to first token", "hfserve_time_to_first_token_seconds_bucket"),
        ("Queue depth", "hfserve_queue_depth"),
        ("Batch size", "hfserve_batch_size_count"),
        ("Response cache hit ratio", "hfserve_response_cache_misses_total"),
        ("Circuit breaker state", "hfserve_breaker_state"),
    ],
)
def test_dashboard_has_the_promised_panels(title: str, metric: str) -> None:
    exprs = _dashboard_exprs()[title]
    assert any(metric in e for e in exprs)


def test_dashboard_datasource_is_the_provisioned_one() -> None:
    datasources = DEPLOYMENTS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    uid = yaml.safe_load(datasources.read_text())["datasources"][0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}


def test_alerts_use_only_exported_metrics_and_track_max_queue() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    used = {name for rule in rules for name in _NAME.findall(rule["expr"])}
    assert used and {n for n in used if not _allowed(n)} == set()
    (queue,) = [r for r in rules if r["alert"] == "HfserveQueueSaturated"]
    threshold = int(queue["expr"].rsplit(">", 1)[1])
    assert threshold == Settings().max_queue * 3 // 4


def test_promtool_checks_rules_and_config(run_tool: Runner) -> None:
    result = run_tool("promtool", "check", "rules", PROMETHEUS / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_tool("promtool", "check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests_pass(run_tool: Runner) -> None:
    result = run_tool("promtool", "test", "rules", "alerts.test.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
