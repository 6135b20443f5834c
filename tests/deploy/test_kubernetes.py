"""Rendered manifests pass kubernetes-validate, and deployments/k8s is what render produces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hfserve.core.keystore import KeyStore
from hfserve.deploy import RenderOptions, render, write_manifests
from hfserve.deploy.output import file_name
from hfserve.settings import Settings
from tests.deploy.conftest import DEPLOYMENTS

Validate = Callable[[list[Path]], None]

CONFIG = """\
[hfserve]
models = ["chat=Qwen/Qwen2.5-0.5B-Instruct", "embed=sentence-transformers/all-MiniLM-L6-v2"]
port = 9000
log_level = "debug"
grace_period = 45
max_queue = 64
redis_url = "redis://:pw@redis.example:6379/1"
"""


def _render_to(tmp_path: Path, settings: Settings, options: RenderOptions) -> list[Path]:
    return write_manifests(render(settings, options), tmp_path)


def test_default_manifests_validate(tmp_path: Path, k8s_validate: Validate) -> None:
    k8s_validate(_render_to(tmp_path, Settings(), RenderOptions()))


def test_redis_manifests_validate(tmp_path: Path, k8s_validate: Validate) -> None:
    options = RenderOptions(redis=True, queue_metric=True, replicas=1, storage_class="standard")
    k8s_validate(_render_to(tmp_path, Settings(), options))


def test_config_file_and_keys_manifests_validate(tmp_path: Path, k8s_validate: Validate) -> None:
    config = tmp_path / "hfserve.toml"
    config.write_text(CONFIG)
    keys_file = tmp_path / "keys.json"
    KeyStore(keys_file).create("ci")
    settings = Settings.load(config)
    options = RenderOptions(name="llm", namespace="serving", keys_file=keys_file)
    k8s_validate(_render_to(tmp_path / "out", settings, options))


def test_committed_manifests_match_render(tmp_path: Path) -> None:
    committed = DEPLOYMENTS / "k8s"
    rendered = _render_to(tmp_path, Settings(), RenderOptions())
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in rendered), (
        "deployments/k8s has other files than `hfserve k8s render` writes"
    )
    for path in rendered:
        expected = path.read_text()
        actual = (committed / path.name).read_text()
        assert actual == expected, (
            f"deployments/k8s/{path.name} drifted: write render(Settings(), RenderOptions()) "
            "there with hfserve.deploy.write_manifests"
        )


@pytest.mark.parametrize("kind", ["Deployment", "ConfigMap", "Secret"])
def test_committed_manifests_file_names(kind: str) -> None:
    assert (DEPLOYMENTS / "k8s" / file_name(kind)).is_file()
