"""Fixtures for the deployment tests: the validator binaries and a clean settings environment."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.tools import find_tool

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENTS = REPO / "deployments"
CHART = DEPLOYMENTS / "helm" / "hfserve"
# Validators must answer quickly; one that hangs fails the test instead of stalling CI.
TOOL_TIMEOUT_S = 60

Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(autouse=True)
def _no_hfserve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renders must depend on the arguments only, not on the developer's HFSERVE_* variables."""
    for name in list(os.environ):
        if name.startswith("HFSERVE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tool_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable HOME for tools that keep state there (helm's cache and config)."""
    return tmp_path_factory.mktemp("tool-home")


@pytest.fixture(scope="session")
def run_tool(tool_home: Path) -> Runner:
    """Run a validator by name (from PATH or .ci/bin), time-boxed, output captured."""

    def run(name: str, *args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HFSERVE_")}
        env.update(HOME=str(tool_home), XDG_CACHE_HOME=str(tool_home / "cache"), NO_COLOR="1")
        return subprocess.run(
            [find_tool(name), *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def k8s_validate(run_tool: Runner) -> Callable[[list[Path]], None]:
    """Assert that manifest files pass ``kubernetes-validate --strict`` (bundled schemas)."""

    def check(files: list[Path]) -> None:
        assert files, "nothing to validate"
        # The oldest and newest Kubernetes this chart claims to support (Chart.yaml kubeVersion).
        result = run_tool("kubernetes-validate", "--strict", "-k", "1.25.0", "-k", "1.37.0", *files)
        assert result.returncode == 0, result.stdout + result.stderr
        # An unknown kind/apiVersion is only a WARN with exit 0: treat it as a failure too.
        assert "WARN" not in result.stdout, result.stdout
        assert "ERROR" not in result.stdout, result.stdout
        assert result.stdout.count(" passed ") >= 2 * len(files), result.stdout

    return check
