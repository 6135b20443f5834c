"""``RenderOptions``: how to deploy (names, image, scale, optional pieces).

Kept apart from the renderer so the CLI can build its defaults without importing Settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hfserve._version import __version__
from hfserve.errors import ConfigError

__all__ = ["RenderOptions"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 63 - len("-redis")


@dataclass(frozen=True)
class RenderOptions:
    """How to deploy: names, image, scale and the optional pieces (Redis, Ingress, keys)."""

    name: str = "hfserve"
    namespace: str = "default"
    image: str = f"ghcr.io/hfserve/hfserve:{__version__}"
    replicas: int = 2
    max_replicas: int | None = None
    redis: bool = False
    redis_image: str = "redis:7.4-alpine"
    ingress: bool = True
    ingress_host: str = "hfserve.example.com"
    ingress_class: str = "nginx"
    rate_limit_rps: int = 20
    keys_file: Path | None = None
    cpu_request: str = "1"
    cpu_limit: str = "4"
    memory_request: str = "2Gi"
    memory_limit: str = "8Gi"
    cache_size: str = "20Gi"
    # Replicas share one read-mostly model cache, so the claim asks for ReadWriteMany.
    cache_access_mode: str = "ReadWriteMany"
    storage_class: str | None = None
    target_cpu_utilization: int = 70
    queue_metric: bool = False

    def validate(self) -> None:
        """Check names and numbers Kubernetes would reject.

        Raises:
            ConfigError: a name is not a DNS label or a number is out of range.
        """
        for param, value, limit in (
            ("name", self.name, _MAX_NAME),
            ("namespace", self.namespace, 63),
        ):
            if len(value) > limit or not _DNS_LABEL.match(value):
                raise ConfigError(
                    f"{param} {value!r} must be a DNS label: lowercase letters, digits and '-', "
                    f"at most {limit} characters",
                    param=param,
                )
        if self.replicas < 1:
            raise ConfigError("replicas must be at least 1", param="replicas")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ConfigError("max_replicas cannot be below replicas", param="max_replicas")
        if not 1 <= self.target_cpu_utilization <= 100:
            raise ConfigError("target CPU utilization must be 1-100", param="cpu")
        if self.rate_limit_rps < 1:
            raise ConfigError("the ingress rate limit must be at least 1 rps", param="rps")
        if not self.image.strip():
            raise ConfigError("image cannot be empty", param="image")
        if self.ingress and not self.ingress_host.strip():
            raise ConfigError("ingress host cannot be empty", param="ingress_host")
        if self.cache_access_mode not in {"ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"}:
            raise ConfigError(
                f"unknown cache access mode {self.cache_access_mode!r}", param="cache_access_mode"
            )
