"""The layering is checked: ``lint-imports`` keeps its contracts, and they fail on an upward arrow.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``). The negative tests run
``lint-imports`` on a copy of the package with one violating module added, so they prove that the
contracts as written catch the mistake, not a contract made up for the test.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` on the package under ``root`` with ``root``'s pyproject contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(root), "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy_with(tmp_path: Path, module: str, source: str) -> Path:
    """A copy of the package and its pyproject, plus ``module`` (a dotted name) with ``source``."""
    shutil.copytree(REPO / "hfserve", tmp_path / "hfserve", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / Path(*module.split("."))).with_suffix(".py").write_text(source)
    return tmp_path


def test_the_package_keeps_every_contract() -> None:
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout
    assert "2 kept" in done.stdout


@pytest.mark.parametrize(
    ("module", "imports", "contract"),
    [
        ("hfserve.core._upward", "hfserve.skills.base", "Arrows point down"),
        ("hfserve.skills._upward", "hfserve.runtime.loader", "Arrows point down"),
        ("hfserve.runtime._upward", "hfserve.server.app", "Arrows point down"),
        ("hfserve.server._upward", "hfserve.cli.main", "Arrows point down"),
        ("hfserve.server._sideways", "hfserve.bench.runner", "Arrows point down"),
        ("hfserve._upward", "hfserve.core.clock", "Arrows point down"),
        ("hfserve.core._heavy", "torch", "core is plain Python"),
        ("hfserve.core._web", "starlette.responses", "core is plain Python"),
    ],
    ids=[
        "core->skills",
        "skills->runtime",
        "runtime->server",
        "server->cli",
        "server->bench",
        "errors->core",
        "core->torch",
        "core->starlette",
    ],
)
def test_an_upward_arrow_breaks_a_contract(
    tmp_path: Path, module: str, imports: str, contract: str
) -> None:
    if module == "hfserve._upward":
        # A base module (errors) that imports the core above it.
        source = (REPO / "hfserve" / "errors.py").read_text() + f"\nimport {imports}\n"
        root = _copy_with(tmp_path, "hfserve.errors", source)
    else:
        root = _copy_with(tmp_path, module, f'"""Violation."""\n\nimport {imports}\n')
    done = _lint_imports(root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{contract}" in done.stdout
    assert "BROKEN" in done.stdout
    assert imports.rsplit(".", 1)[0] in done.stdout
