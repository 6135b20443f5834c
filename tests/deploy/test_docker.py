"""The Dockerfile passes hadolint; the compose files reference only things that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOYMENTS, REPO, Runner

COMPOSE_FILES = ["docker-compose.yml", "docker-compose.prod.yml"]


def _compose(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DEPLOYMENTS / name).read_text())
    assert isinstance(data, dict)
    return data


def _exposed_ports() -> set[int]:
    text = (DEPLOYMENTS / "Dockerfile").read_text()
    return {int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", text, re.MULTILINE)}


def test_hadolint_passes(run_tool: Runner) -> None:
    result = run_tool("hadolint", "--failure-threshold", "info", DEPLOYMENTS / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_non_root_with_healthcheck_and_serve_entrypoint() -> None:
    text = (DEPLOYMENTS / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2, "multi-stage"
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "/health" in text and "HEALTHCHECK" in text
    assert 'ENTRYPOINT ["hfserve", "serve"]' in text
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert _exposed_ports() == {8000}


def test_dockerignore_keeps_only_what_the_build_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set(
        re.findall(r"^COPY (?!--from)(.+) \S+$", (DEPLOYMENTS / "Dockerfile").read_text(), re.M)
    )
    sources = {src for group in copied for src in group.split()}
    assert sources <= kept
    assert all((REPO / path).exists() for path in kept)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_references_exist(name: str) -> None:
    compose = _compose(name)
    services: dict[str, Any] = compose["services"]
    volumes = set(compose.get("volumes") or {})
    for service_name, service in services.items():
        build = service.get("build")
        if build:
            context = (DEPLOYMENTS / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), service_name
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{service_name} depends on unknown {dependency}"
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOYMENTS / source).exists(), f"{service_name}: {source} is missing"
            else:
                assert source in volumes, f"{service_name}: undeclared volume {source}"
        if service_name == "hfserve":
            container_ports = {int(str(p).rsplit(":", 1)[1]) for p in service["ports"]}
            assert container_ports <= _exposed_ports()


def test_dev_compose_mounts_source_and_logs_debug() -> None:
    service = _compose("docker-compose.yml")["services"]["hfserve"]
    assert "../hfserve:/src/hfserve:ro" in service["volumes"]
    assert service["environment"]["PYTHONPATH"] == "/src"
    assert "hfserve serve --log-level debug" in service["entrypoint"]


def test_prod_compose_scrapes_every_replica_and_provisions_grafana() -> None:
    compose = _compose("docker-compose.prod.yml")
    services = compose["services"]
    assert services["hfserve"]["deploy"]["replicas"] >= 2
    assert services["hfserve"]["environment"]["HFSERVE_REDIS_URL"].startswith("redis://redis:")
    prometheus = yaml.safe_load((DEPLOYMENTS / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "hfserve"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["hfserve"] and sd["port"] in _exposed_ports()
    for rule_file in prometheus["rule_files"]:
        assert (DEPLOYMENTS / "prometheus" / rule_file).is_file()
    datasources = DEPLOYMENTS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    (source,) = yaml.safe_load(datasources.read_text())["datasources"]
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in services
    assert any(p.endswith(f":{port}") for p in services["prometheus"]["ports"])
    providers = DEPLOYMENTS / "grafana" / "provisioning" / "dashboards" / "hfserve.yml"
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    mounted = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"]}
    local = Path(mounted[provider["options"]["path"]])
    assert (DEPLOYMENTS / local / "hfserve.json").is_file()
