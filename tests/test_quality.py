"""The project's own static checks, run by the test suite so CI runs exactly what developers do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=880
    )


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "hfserve", "tests", "benchmarks", "examples", "scripts"),
        ("ruff", "format", "--check", "hfserve", "tests", "benchmarks", "examples", "scripts"),
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(command: tuple[str, ...]) -> None:
    result = _run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


# A fresh clone has no .mypy_cache: the first strict run checks torch's and transformers' stubs
# too (~45 s of CPU), which on a busy shared CI machine can pass the suite's 300 s default.
@pytest.mark.timeout(900)
def test_mypy_strict_on_hfserve() -> None:
    result = _run("mypy", "hfserve")
    assert result.returncode == 0, result.stdout + result.stderr
