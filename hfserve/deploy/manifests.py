"""Render Kubernetes manifests from the server's own :class:`~hfserve.settings.Settings`.

The ConfigMap is ``Settings.to_env()`` of the settings the container will run with, so what the
cluster runs cannot drift from what ``hfserve serve`` reads. Every number that has a meaning in
the server (grace period, load timeout, body size, queue length, port) is derived from the same
object rather than repeated here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hfserve.core.keystore import KeyStore
from hfserve.deploy.metric_names import QUEUE_DEPTH_METRIC
from hfserve.deploy.options import RenderOptions
from hfserve.errors import ConfigError
from hfserve.settings import Settings

__all__ = [
    "CONTAINER_PORT",
    "KEYS_MOUNT_PATH",
    "KINDS",
    "PLACEHOLDER_KEYS",
    "RenderOptions",
    "render",
]

Manifest = dict[str, Any]

# Apply order: configuration and storage before the workloads that mount them.
KINDS: tuple[str, ...] = (
    "ConfigMap",
    "Secret",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "Ingress",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
)

CONTAINER_PORT = 8000
KEYS_MOUNT_PATH = "/etc/hfserve/keys"
_KEYS_FILE_NAME = "keys.json"
_CACHE_MOUNT_PATH = "/cache"
_UID = 10001  # the non-root user the Dockerfile creates
_REDIS_UID = 999  # the redis user of the official redis image
_REDIS_PORT = 6379
# The Service's endpoints are removed asynchronously after a pod starts terminating; sleeping
# before SIGTERM lets kube-proxy/ingress stop routing to the pod before it begins to drain.
_PRESTOP_SECONDS = 5
_TERMINATION_MARGIN_SECONDS = 10
_STARTUP_PERIOD_SECONDS = 10
_KEYS_FILE_VERSION = 1
PLACEHOLDER_KEYS = {"version": _KEYS_FILE_VERSION, "keys": []}


def render(settings: Settings, options: RenderOptions | None = None) -> dict[str, list[Manifest]]:
    """Build every manifest for ``settings``, grouped by kind in apply order.

    Raises:
        ConfigError: the options are invalid or the keys file is missing or corrupt.
    """
    options = options if options is not None else RenderOptions()
    options.validate()
    container = _container_settings(settings, options)
    config_data, secret_env = _config_data(container)
    secret = _secret(options, secret_env)
    checksum = hashlib.sha256(
        json.dumps([config_data, secret["data"]], sort_keys=True).encode()
    ).hexdigest()
    manifests: dict[str, list[Manifest]] = {kind: [] for kind in KINDS}
    manifests["ConfigMap"].append(_config_map(options, config_data))
    manifests["Secret"].append(secret)
    manifests["PersistentVolumeClaim"].append(_cache_claim(options))
    manifests["Deployment"].append(_deployment(container, options, checksum, sorted(secret_env)))
    manifests["Service"].append(_service(options, "server", 80, "http"))
    if options.redis:
        manifests["Deployment"].append(_redis_deployment(options))
        manifests["Service"].append(_service(options, "redis", _REDIS_PORT, "redis"))
    if options.ingress:
        manifests["Ingress"].append(_ingress(container, options))
    manifests["HorizontalPodAutoscaler"].append(_autoscaler(container, options))
    manifests["PodDisruptionBudget"].append(_disruption_budget(options))
    return {kind: docs for kind, docs in manifests.items() if docs}


def _container_settings(settings: Settings, options: RenderOptions) -> Settings:
    """The settings as the container sees them: bound to all interfaces, keys from the Secret."""
    update: dict[str, Any] = {
        # A pod's only way in is its own network namespace; binding all interfaces is the point.
        "host": "0.0.0.0",  # noqa: S104  # nosec B104 - see the line above
        "port": settings.port or CONTAINER_PORT,
        "keys_file": Path(KEYS_MOUNT_PATH) / _KEYS_FILE_NAME,
    }
    if options.redis:
        update["redis_url"] = f"redis://{_redis_name(options)}:{_REDIS_PORT}/0"
    return settings.model_copy(update=update)


def _config_data(container: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """Split ``to_env()`` into ConfigMap data and the values that must live in the Secret."""
    env = container.to_env()
    env["HFSERVE_HOST"] = container.host
    env["HFSERVE_PORT"] = str(container.port)
    env["HFSERVE_KEYS_FILE"] = str(container.keys_file)
    secret_env: dict[str, str] = {}
    redis_url = env.get("HFSERVE_REDIS_URL")
    # A Redis URL with a password is a credential: it goes to the Secret, not the ConfigMap.
    if redis_url and urlsplit(redis_url).password:
        secret_env["HFSERVE_REDIS_URL"] = env.pop("HFSERVE_REDIS_URL")
    return dict(sorted(env.items())), secret_env


def _keys_document(keys_file: Path | None) -> str:
    """The hashed keys JSON for the Secret: re-encoded from the parsed records, never copied."""
    if keys_file is None:
        payload: dict[str, Any] = dict(PLACEHOLDER_KEYS)
    else:
        if not keys_file.is_file():
            raise ConfigError(f"keys file not found: {keys_file}", param="keys_file")
        # Going through KeyStore validates the file and keeps only the record fields it knows
        # (hash, id, limits...), so nothing else that happens to be in the file can leak.
        records = KeyStore(keys_file).list_keys()
        payload = {"version": _KEYS_FILE_VERSION, "keys": [asdict(r) for r in records]}
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _labels(options: RenderOptions, component: str) -> dict[str, str]:
    return {
        **_selector(options, component),
        "app.kubernetes.io/version": _image_tag(options.image),
        "app.kubernetes.io/managed-by": "hfserve",
    }


def _selector(options: RenderOptions, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "hfserve",
        "app.kubernetes.io/instance": options.name,
        "app.kubernetes.io/component": component,
    }


def _image_tag(image: str) -> str:
    """The tag of an image reference (``latest`` when it has none), as a valid label value."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else "latest"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", tag)[:63].strip("-_.") or "latest"


def _metadata(options: RenderOptions, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": options.namespace, "labels": _labels(options, component)}


def _redis_name(options: RenderOptions) -> str:
    return f"{options.name}-redis"


def _config_map(options: RenderOptions, data: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(options, f"{options.name}-config", "server"),
        "data": data,
    }


def _secret(options: RenderOptions, secret_env: dict[str, str]) -> Manifest:
    data = {_KEYS_FILE_NAME: _b64(_keys_document(options.keys_file))}
    data.update({name: _b64(value) for name, value in secret_env.items()})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(options, f"{options.name}-keys", "server"),
        "type": "Opaque",
        "data": data,
    }


def _cache_claim(options: RenderOptions) -> Manifest:
    spec: dict[str, Any] = {
        "accessModes": [options.cache_access_mode],
        "resources": {"requests": {"storage": options.cache_size}},
    }
    if options.storage_class:
        spec["storageClassName"] = options.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(options, f"{options.name}-cache", "server"),
        "spec": spec,
    }


def _http_probe(path: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _deployment(
    container: Settings, options: RenderOptions, checksum: str, secret_env: list[str]
) -> Manifest:
    port = container.port
    # Models load one after another before the server is live; allow each its load timeout.
    load_budget = container.load_timeout * max(1, len(container.models))
    startup_failures = math.ceil(load_budget / _STARTUP_PERIOD_SECONDS) + 1
    grace = _PRESTOP_SECONDS + math.ceil(container.grace_period) + _TERMINATION_MARGIN_SECONDS
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},  # noqa: S108  # nosec B108 - an emptyDir; root fs read-only
        {"name": "HF_HOME", "value": f"{_CACHE_MOUNT_PATH}/huggingface"},
        {"name": "XDG_CACHE_HOME", "value": _CACHE_MOUNT_PATH},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    env += [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": f"{options.name}-keys", "key": name}},
        }
        for name in secret_env
    ]
    server = {
        "name": "hfserve",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": f"{options.name}-config"}}],
        "env": env,
        "resources": {
            "requests": {"cpu": options.cpu_request, "memory": options.memory_request},
            "limits": {"cpu": options.cpu_limit, "memory": options.memory_limit},
        },
        "startupProbe": _http_probe("/health", _STARTUP_PERIOD_SECONDS, startup_failures),
        "livenessProbe": _http_probe("/health", 10, 3),
        "readinessProbe": _http_probe("/ready", 5, 2),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(_PRESTOP_SECONDS)]}}},
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "cache", "mountPath": _CACHE_MOUNT_PATH},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108  # nosec B108 - an emptyDir mount point
            {"name": "keys", "mountPath": KEYS_MOUNT_PATH, "readOnly": True},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options, options.name, "server"),
        "spec": {
            "replicas": options.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(options, "server")},
            # Never drop below the wanted capacity: a new pod may need minutes to load models.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": _labels(options, "server"),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                        # Changing the configuration or the keys rolls the pods.
                        "checksum/config": checksum,
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": _pod_security(_UID),
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": _selector(options, "server")},
                        }
                    ],
                    "containers": [server],
                    "volumes": [
                        {
                            "name": "cache",
                            "persistentVolumeClaim": {"claimName": f"{options.name}-cache"},
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                        {"name": "keys", "secret": {"secretName": f"{options.name}-keys"}},
                    ],
                },
            },
        },
    }


def _pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _service(options: RenderOptions, component: str, port: int, target: str) -> Manifest:
    name = options.name if component == "server" else _redis_name(options)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options, name, component),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(options, component),
            "ports": [{"name": target, "port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }


def _redis_deployment(options: RenderOptions) -> Manifest:
    ping = {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 10, "timeoutSeconds": 3}
    container = {
        "name": "redis",
        "image": options.redis_image,
        "imagePullPolicy": "IfNotPresent",
        # Shared state here is rate-limit buckets and caches: losing it on restart is harmless,
        # so no persistence and no disk writes.
        "args": ["--save", "", "--appendonly", "no"],
        "ports": [{"name": "redis", "containerPort": _REDIS_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "livenessProbe": ping,
        "readinessProbe": ping,
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options, _redis_name(options), "redis"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _selector(options, "redis")},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": _labels(options, "redis")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(_REDIS_UID),
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def _ingress(container: Settings, options: RenderOptions) -> Manifest:
    annotations = {
        "nginx.ingress.kubernetes.io/limit-rps": str(options.rate_limit_rps),
        "nginx.ingress.kubernetes.io/limit-burst-multiplier": "5",
        # The proxy must accept what the server accepts, and no more.
        "nginx.ingress.kubernetes.io/proxy-body-size": str(container.max_body_bytes),
        # Streaming (SSE) responses must reach the client token by token, unbuffered.
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": str(math.ceil(container.load_timeout)),
        "nginx.ingress.kubernetes.io/ssl-redirect": "true",
    }
    metadata = _metadata(options, options.name, "server")
    metadata["annotations"] = annotations
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": {
            "ingressClassName": options.ingress_class,
            "tls": [{"hosts": [options.ingress_host], "secretName": f"{options.name}-tls"}],
            "rules": [
                {
                    "host": options.ingress_host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {
                                    "service": {"name": options.name, "port": {"name": "http"}}
                                },
                            }
                        ]
                    },
                }
            ],
        },
    }


def _autoscaler(container: Settings, options: RenderOptions) -> Manifest:
    max_replicas = options.max_replicas or max(options.replicas * 3, options.replicas + 1)
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {
                    "type": "Utilization",
                    "averageUtilization": options.target_cpu_utilization,
                },
            },
        }
    ]
    if options.queue_metric:
        # Scale out well before the queue sheds load: a quarter of max_queue per pod.
        target = max(1, container.max_queue // 4)
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": QUEUE_DEPTH_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(target)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(options, options.name, "server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.replicas,
            "maxReplicas": max_replicas,
            "metrics": metrics,
            # New pods load models for minutes; scale down slowly so capacity is not thrashed.
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def _disruption_budget(options: RenderOptions) -> Manifest:
    # maxUnavailable (not minAvailable) so a single-replica deployment can still be drained.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(options, options.name, "server"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(options, "server")}},
    }
