"""README "Development" and `.ci/run` describe one procedure: a fresh venv, then one command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _development_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Development", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def _dev_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    return {r.name.lower(): r for r in reqs}


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / ".ci/test-constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_ci_runs_the_readme_test_command_verbatim_in_a_fresh_venv() -> None:
    venv, test_command = _development_commands()
    assert venv.startswith("python3 -m venv .venv")
    # The coverage floor belongs to the full run (subsets such as -m "not slow" skip it).
    assert test_command.endswith("&& pytest --cov --cov-fail-under=95")
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci, "README Development's test command is not in .ci/run"
    # The venv is rebuilt before the install, so CI never leans on what the machine had.
    made = next(i for i, line in enumerate(ci) if line.startswith("python3 -m venv"))
    activated = next(i for i, line in enumerate(ci) if "bin/activate" in line)
    assert any(line.startswith('rm -rf "$venv"') for line in ci[:made])
    assert made < activated < ci.index(test_command)


def test_dev_declares_the_build_tools_the_tests_call() -> None:
    dev = _dev_requirements()
    # tests/packaging: `python -m build --no-isolation`; plugin fixtures: pip
    # --no-build-isolation with the project's build backend.
    assert {"build", "hatchling"} <= set(dev)
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]
    assert any(req.startswith("hatchling") for req in backend["requires"])


def test_constraints_satisfy_the_dev_extra() -> None:
    pins = _constraints()
    for name, req in _dev_requirements().items():
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    # The pair that broke a fresh resolve is held where it is known to work.
    assert {"pytest", "schemathesis", "hatchling", "build", "torch"} <= set(pins)
    assert pins["torch"] == "2.13.0"
