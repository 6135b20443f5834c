"""``hfserve.deploy.manifests``: manifests derived from Settings, validated by behaviour."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hfserve.core.keystore import KeyStore
from hfserve.deploy import KINDS, RenderOptions, dump_documents, render, write_manifests
from hfserve.deploy.metric_names import METRIC_NAMES, QUEUE_DEPTH_METRIC
from hfserve.deploy.output import HEADER, file_name
from hfserve.errors import ConfigError
from hfserve.settings import Settings


def _one(manifests: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    (doc,) = manifests[kind]
    return doc


def _server(manifests: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return manifests["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]


def _secret_keys(manifests: dict[str, list[dict[str, Any]]]) -> str:
    data = _one(manifests, "Secret")["data"]["keys.json"]
    return base64.b64decode(data).decode()


def test_defaults_render_every_kind_in_apply_order() -> None:
    manifests = render(Settings())
    assert list(manifests) == list(KINDS)
    for docs in manifests.values():
        for doc in docs:
            assert doc["metadata"]["namespace"] == "default"
            assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "hfserve"


def test_config_map_is_the_containers_settings() -> None:
    settings = Settings(log_level="debug", max_batch_size=8, models=["chat=/m/a", "/m/b"])
    data = _one(render(settings), "ConfigMap")["data"]
    assert data["HFSERVE_LOG_LEVEL"] == "debug"
    assert data["HFSERVE_MAX_BATCH_SIZE"] == "8"
    assert data["HFSERVE_MODELS"] == "chat=/m/a,/m/b"
    assert data["HFSERVE_HOST"] == "0.0.0.0"
    assert data["HFSERVE_PORT"] == "8000"
    assert data["HFSERVE_KEYS_FILE"] == "/etc/hfserve/keys/keys.json"
    # Every key is a real setting: the ConfigMap is the server's own configuration.
    fields = {f"HFSERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields
    # Round trip: the server reading this environment gets the same settings back.
    assert Settings(**{k.removeprefix("HFSERVE_").lower(): v for k, v in data.items()}).models == [
        "chat=/m/a",
        "/m/b",
    ]


def test_custom_port_flows_to_container_probe_and_scrape_annotation() -> None:
    manifests = render(Settings(port=9100))
    server = _server(manifests)
    assert server["ports"][0]["containerPort"] == 9100
    annotations = manifests["Deployment"][0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9100"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert _one(manifests, "ConfigMap")["data"]["HFSERVE_PORT"] == "9100"


def test_probes_security_and_termination_follow_settings() -> None:
    manifests = render(Settings(grace_period=42.5, load_timeout=95, models=["a", "b"]))
    pod = manifests["Deployment"][0]["spec"]["template"]["spec"]
    server = _server(manifests)
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    # Two models at 95 s each, probed every 10 s: 19 failures plus one to spare.
    assert server["startupProbe"]["failureThreshold"] == 20
    # preStop sleep (5) + ceil(grace) (43) + margin (10).
    assert pod["terminationGracePeriodSeconds"] == 58
    assert server["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert {"/cache", "/tmp", "/etc/hfserve/keys"} <= mounts
    strategy = manifests["Deployment"][0]["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_placeholder_secret_is_an_empty_key_set() -> None:
    assert json.loads(_secret_keys(render(Settings()))) == {"version": 1, "keys": []}


def test_keys_file_goes_in_hashed_never_plaintext(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    store = KeyStore(keys_file)
    record, plaintext = store.create("ci", rpm=60)
    # Anything beyond the known record fields stays out of the Secret.
    raw = json.loads(keys_file.read_text())
    raw["keys"][0]["note"] = plaintext
    keys_file.write_text(json.dumps(raw))

    manifests = render(Settings(), RenderOptions(keys_file=keys_file))
    text = _secret_keys(manifests)
    everything = dump_documents([d for docs in manifests.values() for d in docs])
    assert plaintext not in text
    assert plaintext not in everything
    (entry,) = json.loads(text)["keys"]
    assert entry["key_hash"] == record.key_hash
    assert entry["id"] == record.id
    assert "note" not in entry


def test_changing_keys_rolls_the_pods(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    KeyStore(keys_file).create("one")

    def checksum(options: RenderOptions) -> str:
        deployment = render(Settings(), options)["Deployment"][0]
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(RenderOptions()) != checksum(RenderOptions(keys_file=keys_file))
    assert checksum(RenderOptions()) == checksum(RenderOptions())


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), ("{not json", "corrupt"), ('{"version": 9, "keys": []}', "corrupt")],
)
def test_bad_keys_file_is_a_config_error(tmp_path: Path, content: str | None, message: str) -> None:
    keys_file = tmp_path / "keys.json"
    if content is not None:
        keys_file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        render(Settings(), RenderOptions(keys_file=keys_file))


def test_redis_adds_deployment_service_and_url() -> None:
    manifests = render(Settings(), RenderOptions(name="api", redis=True))
    names = [d["metadata"]["name"] for d in manifests["Deployment"]]
    assert names == ["api", "api-redis"]
    assert [s["metadata"]["name"] for s in manifests["Service"]] == ["api", "api-redis"]
    redis_service = manifests["Service"][1]
    assert redis_service["spec"]["selector"]["app.kubernetes.io/component"] == "redis"
    data = _one(manifests, "ConfigMap")["data"]
    assert data["HFSERVE_REDIS_URL"] == "redis://api-redis:6379/0"
    redis_pod = manifests["Deployment"][1]["spec"]["template"]["spec"]
    assert redis_pod["securityContext"]["runAsNonRoot"] is True


def test_redis_password_goes_to_the_secret_not_the_config_map() -> None:
    url = "redis://:s3cret@redis.internal:6379/0"
    manifests = render(Settings(redis_url=url))
    assert "HFSERVE_REDIS_URL" not in _one(manifests, "ConfigMap")["data"]
    secret = _one(manifests, "Secret")["data"]
    assert base64.b64decode(secret["HFSERVE_REDIS_URL"]).decode() == url
    env = {e["name"]: e for e in _server(manifests)["env"]}
    ref = env["HFSERVE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "hfserve-keys", "key": "HFSERVE_REDIS_URL"}
    # A URL without credentials is plain configuration.
    plain = render(Settings(redis_url="redis://redis:6379/0"))
    assert _one(plain, "ConfigMap")["data"]["HFSERVE_REDIS_URL"] == "redis://redis:6379/0"


def test_ingress_tls_and_limits_follow_settings_and_can_be_left_out() -> None:
    manifests = render(Settings(max_body_bytes=2048), RenderOptions(ingress_host="api.test"))
    ingress = _one(manifests, "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["api.test"], "secretName": "hfserve-tls"}]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "2048"
    assert annotations["nginx.ingress.kubernetes.io/limit-rps"] == "20"
    assert "Ingress" not in render(Settings(), RenderOptions(ingress=False))


def test_autoscaler_cpu_and_optional_queue_metric() -> None:
    hpa = _one(render(Settings(), RenderOptions(replicas=3)), "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    options = RenderOptions(replicas=1, max_replicas=4, queue_metric=True)
    hpa = _one(render(Settings(max_queue=100), options), "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == 4
    pods = hpa["spec"]["metrics"][1]["pods"]
    assert pods["metric"]["name"] == QUEUE_DEPTH_METRIC
    assert QUEUE_DEPTH_METRIC in METRIC_NAMES
    assert pods["target"]["averageValue"] == "25"


def test_storage_class_and_version_label() -> None:
    options = RenderOptions(storage_class="fast", image="registry.local:5000/hfserve@sha256:ab")
    manifests = render(Settings(), options)
    assert _one(manifests, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast"
    labels = _one(manifests, "Service")["metadata"]["labels"]
    assert labels["app.kubernetes.io/version"] == "latest"
    tagged = render(Settings(), RenderOptions(image="ghcr.io/x/y:1.2+b"))
    assert _one(tagged, "Service")["metadata"]["labels"]["app.kubernetes.io/version"] == "1.2-b"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        (RenderOptions(name="Bad_Name"), "name"),
        (RenderOptions(name="x" * 60), "name"),
        (RenderOptions(namespace="-ns"), "namespace"),
        (RenderOptions(replicas=0), "replicas"),
        (RenderOptions(replicas=3, max_replicas=2), "max_replicas"),
        (RenderOptions(target_cpu_utilization=0), "cpu"),
        (RenderOptions(rate_limit_rps=0), "rps"),
        (RenderOptions(image=" "), "image"),
        (RenderOptions(ingress_host=""), "ingress_host"),
        (RenderOptions(cache_access_mode="Sometimes"), "cache_access_mode"),
    ],
)
def test_invalid_options_are_config_errors(options: RenderOptions, param: str) -> None:
    with pytest.raises(ConfigError) as info:
        render(Settings(), options)
    assert info.value.param == param


def test_dump_is_a_parseable_multi_document_stream() -> None:
    docs = [d for docs in render(Settings()).values() for d in docs]
    text = dump_documents(docs)
    assert text.startswith(HEADER)
    assert list(yaml.safe_load_all(text)) == docs


def test_write_manifests_one_file_per_kind_and_removes_stale_kinds(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    unrelated = out / "kustomization.yaml"
    out.mkdir()
    unrelated.write_text("keep me")
    written = write_manifests(render(Settings(), RenderOptions(redis=True)), out)
    assert sorted(p.name for p in written) == sorted(file_name(k) for k in KINDS)
    deployments = list(yaml.safe_load_all((out / "deployment.yaml").read_text()))
    assert len(deployments) == 2
    write_manifests(render(Settings(), RenderOptions(ingress=False)), out)
    assert not (out / "ingress.yaml").exists()
    assert unrelated.read_text() == "keep me"


def test_write_manifests_into_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        write_manifests(render(Settings()), blocker)
    with pytest.raises(ConfigError, match="not a directory"):
        write_manifests(render(Settings()), blocker / "sub")


def test_write_manifests_unwritable_is_a_config_error(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    (out / "configmap.yaml").mkdir(parents=True)
    with pytest.raises(ConfigError, match="cannot write manifests"):
        write_manifests(render(Settings()), out)
