"""``hfserve k8s render``: stdout stream, --out files, flags, errors, and a light import."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from hfserve.cli.k8s import k8s_app
from hfserve.core.keystore import KeyStore
from hfserve.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_hfserve_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("HFSERVE_"):
            monkeypatch.delenv(name)
    # Never the developer's own keys file: render reads `hfserve serve`'s keys file by default.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(k8s_app, name="k8s")
    return app


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(_app(), ["k8s", "render", *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_stdout_is_one_multi_document_stream() -> None:
    code, out, _ = _invoke("--name", "llm", "--namespace", "ai", "--replicas", "3", "--no-auth")
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    kinds = [d["kind"] for d in docs]
    assert kinds == [
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"ai"}
    deployment = docs[kinds.index("Deployment")]
    assert deployment["metadata"]["name"] == "llm"
    assert deployment["spec"]["replicas"] == 3


def test_flags_reach_the_manifests(tmp_path: Path) -> None:
    config = tmp_path / "hfserve.toml"
    config.write_text('[hfserve]\nlog_level = "debug"\nmodels = ["from-config"]\n')
    keys_file = tmp_path / "keys.json"
    _, plaintext = KeyStore(keys_file).create("ci")
    code, out, _ = _invoke(
        "--config", str(config),
        "--model", "chat=/models/a",
        "--model", "/models/b",
        "--image", "registry.test/hfserve:9.9",
        "--redis",
        "--no-ingress",
        "--queue-metric",
        "--max-replicas", "7",
        "--keys-file", str(keys_file),
    )  # fmt: skip
    assert code == 0
    assert plaintext not in out
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out)}
    data = docs[("ConfigMap", "hfserve-config")]["data"]
    assert data["HFSERVE_LOG_LEVEL"] == "debug"
    assert data["HFSERVE_MODELS"] == "chat=/models/a,/models/b"
    assert data["HFSERVE_REDIS_URL"] == "redis://hfserve-redis:6379/0"
    assert ("Deployment", "hfserve-redis") in docs
    assert not any(kind == "Ingress" for kind, _ in docs)
    hpa = docs[("HorizontalPodAutoscaler", "hfserve")]["spec"]
    assert hpa["maxReplicas"] == 7 and len(hpa["metrics"]) == 2
    server = docs[("Deployment", "hfserve")]["spec"]["template"]["spec"]["containers"][0]
    assert server["image"] == "registry.test/hfserve:9.9"
    secret = docs[("Secret", "hfserve-keys")]["data"]["keys.json"]
    assert json.loads(base64.b64decode(secret))["keys"][0]["name"] == "ci"


def test_out_writes_one_file_per_kind(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    code, stdout, stderr = _invoke("--out", str(out), "--ingress-host", "api.test", "--no-auth")
    assert code == 0
    assert stdout == ""
    assert "wrote" in stderr
    files = sorted(p.name for p in out.iterdir())
    assert "deployment.yaml" in files and "ingress.yaml" in files and len(files) == 8
    ingress = yaml.safe_load((out / "ingress.yaml").read_text())
    assert ingress["spec"]["rules"][0]["host"] == "api.test"


def test_bad_input_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DNS label"):
        _invoke("--name", "Not_Valid")
    with pytest.raises(ConfigError, match="config file not found"):
        _invoke("--config", str(tmp_path / "missing.toml"))


def test_replicas_below_one_is_a_usage_error() -> None:
    code, _, _ = _invoke("--replicas", "0")
    assert code == 2


def test_render_through_the_real_cli_imports_no_heavy_libraries(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from hfserve.cli.main import main\n"
        "try:\n"
        "    main(['k8s', 'render', '--no-auth', '--out', sys.argv[1]])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'starlette') if m in sys.modules)\n"
        "print('heavy=' + ','.join(heavy))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFSERVE_")}
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("heavy="), result.stdout
    assert (tmp_path / "out" / "deployment.yaml").is_file()


def test_cli_error_is_one_line_and_exit_code_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFSERVE_")}
    result = subprocess.run(
        [sys.executable, "-m", "hfserve", "k8s", "render", "--name", "Bad_Name"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: name 'Bad_Name'")
    assert "Traceback" not in result.stderr


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HFSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "hfserve", *args],
        cwd=REPO,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_render_refuses_a_reachable_deployment_without_keys(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    refused = _cli("k8s", "render", "-o", str(tmp_path / "k8s"), env=env)
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "error: refusing to render a reachable Service and Ingress with an empty API key Secret"
    )
    assert "--no-auth" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "k8s").exists()

    empty = tmp_path / "empty.json"
    KeyStore(empty).create("gone")
    empty.write_text('{"version": 1, "keys": []}\n')
    no_keys = _cli("k8s", "render", "--no-ingress", "--keys-file", str(empty), env=env)
    assert no_keys.returncode == 2
    assert f"reachable Service with an empty API key Secret ({empty} holds no API key)" in (
        no_keys.stderr
    )


def test_no_auth_deploys_openly_and_says_so(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    result = _cli("k8s", "render", "--no-auth", env=env)
    assert result.returncode == 0, result.stderr
    assert "auth off: --no-auth" in result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    assert docs["ConfigMap"]["data"]["HFSERVE_AUTH"] == "false"


def test_render_takes_the_keys_hfserve_keys_create_wrote(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    created = _cli("keys", "create", "--name", "alice", env=env)
    assert created.returncode == 0, created.stderr
    result = _cli("k8s", "render", env=env)
    assert result.returncode == 0, result.stderr
    keys_file = tmp_path / "config" / "hfserve" / "keys.json"
    assert f"auth on: 1 key in {keys_file}" in result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}
    secret = json.loads(base64.b64decode(docs["Secret"]["data"]["keys.json"]))
    assert [k["name"] for k in secret["keys"]] == ["alice"]
    assert "HFSERVE_AUTH" not in docs["ConfigMap"]["data"]


def test_auth_forced_on_without_keys_is_not_open(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "HFSERVE_AUTH": "true"}
    result = _cli("k8s", "render", env=env)
    assert result.returncode == 0, result.stderr
    assert "auth on: no keys yet in" in result.stderr
