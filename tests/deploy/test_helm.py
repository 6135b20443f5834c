"""The Helm chart lints, renders valid Kubernetes objects and agrees with `hfserve k8s render`."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hfserve._version import __version__
from hfserve.core.keystore import KeyStore
from hfserve.deploy import KINDS, RenderOptions, render
from hfserve.settings import Settings
from tests.deploy.conftest import CHART, Runner

Validate = Callable[[list[Path]], None]


def _template(run_tool: Runner, tmp_path: Path, *args: str) -> list[dict[str, Any]]:
    result = run_tool("helm", "template", "hfserve", CHART, "--namespace", "default", *args)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "helm.yaml"
    out.write_text(result.stdout)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_helm_lint_strict(run_tool: Runner) -> None:
    result = run_tool("helm", "lint", "--strict", CHART)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--set", "redis.enabled=true", "--set", "autoscaling.queueDepth.enabled=true"),
        (
            "--set",
            "ingress.enabled=false",
            "--set",
            "autoscaling.enabled=false",
            "--set",
            "persistence.enabled=false",
            "--set",
            "config.HFSERVE_MODELS=a\\,b",
            "--set",
            "ingress.canary.enabled=true",
        ),
    ],
    ids=["defaults", "redis", "minimal"],
)
def test_helm_template_validates(
    run_tool: Runner, k8s_validate: Validate, tmp_path: Path, args: tuple[str, ...]
) -> None:
    docs = _template(run_tool, tmp_path, *args)
    assert docs
    k8s_validate([tmp_path / "helm.yaml"])


def test_chart_renders_the_same_kinds_as_the_cli(run_tool: Runner, tmp_path: Path) -> None:
    docs = _template(run_tool, tmp_path, "--set", "redis.enabled=true")
    helm_kinds = sorted(d["kind"] for d in docs)
    cli = render(Settings(), RenderOptions(redis=True))
    assert helm_kinds == sorted(k for k in KINDS for _ in cli[k])


def test_chart_server_pod_matches_render(run_tool: Runner, tmp_path: Path) -> None:
    docs = _template(run_tool, tmp_path)
    (helm_deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    cli_deploy = render(Settings())["Deployment"][0]
    helm_pod, cli_pod = (
        helm_deploy["spec"]["template"]["spec"],
        cli_deploy["spec"]["template"]["spec"],
    )
    for key in ("terminationGracePeriodSeconds", "securityContext", "automountServiceAccountToken"):
        assert helm_pod[key] == cli_pod[key], key
    helm_c, cli_c = helm_pod["containers"][0], cli_pod["containers"][0]
    for key in ("startupProbe", "livenessProbe", "readinessProbe", "lifecycle", "securityContext"):
        assert helm_c[key] == cli_c[key], key
    assert helm_c["image"] == cli_c["image"]


def test_chart_config_map_keys_are_settings(run_tool: Runner, tmp_path: Path) -> None:
    docs = _template(
        run_tool, tmp_path, "--set", "config.HFSERVE_LOG_LEVEL=debug", "--set", "redis.enabled=true"
    )
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    fields = {f"HFSERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(config_map["data"]) <= fields
    assert config_map["data"]["HFSERVE_LOG_LEVEL"] == "debug"
    cli_data = render(Settings(log_level="debug"), RenderOptions(redis=True))["ConfigMap"][0]
    assert config_map["data"] == cli_data["data"]


def test_chart_rejects_unknown_config_names(run_tool: Runner) -> None:
    result = run_tool("helm", "template", "x", CHART, "--set", "config.LOG_LEVEL=debug")
    assert result.returncode != 0
    assert "HFSERVE_" in result.stderr


def test_chart_secret_holds_the_hashed_keys_file(run_tool: Runner, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    _, plaintext = KeyStore(keys_file).create("ci")
    docs = _template(run_tool, tmp_path, "--set-file", f"keys.json={keys_file}")
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    content = base64.b64decode(secret["data"]["keys.json"]).decode()
    assert plaintext not in content
    assert json.loads(content)["keys"][0]["key_hash"]


def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__, "bump deployments/helm/hfserve/Chart.yaml"
