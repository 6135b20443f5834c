"""The release artefacts: ``python -m build`` makes a wheel and an sdist that twine accepts,
and the wheel installs into a fresh virtualenv whose ``hfserve`` command works."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

from hfserve._version import __version__

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Dist:
    """The built wheel and sdist."""

    wheel: Path
    sdist: Path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # A wide terminal, so rich tables print names whole instead of wrapping them.
    env = os.environ | {"COLUMNS": "200"}
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``python -m build`` (sdist, then the wheel from the sdist), with no network."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], ROOT)
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return Dist(wheels[0], sdists[0])


def test_artefacts_are_named_for_the_version(dist: Dist) -> None:
    assert dist.wheel.name == f"hfserve-{__version__}-py3-none-any.whl"
    assert dist.sdist.name == f"hfserve-{__version__}.tar.gz"


def test_twine_check_passes(dist: Dist) -> None:
    result = _run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.wheel), str(dist.sdist)],
        ROOT,
    )
    assert result.stdout.count("PASSED") == 2


def test_wheel_holds_the_package_metadata_and_entry_point(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        info = f"hfserve-{__version__}.dist-info"
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert {"hfserve/_version.py", "hfserve/cli/main.py", "hfserve/server/app.py"} <= names
    assert not any(n.startswith(("tests/", "examples/", "docs/")) for n in names)
    assert metadata["Version"] == __version__
    assert metadata["Requires-Python"] == ">=3.11"
    assert "hfserve = hfserve.cli.main:main" in entry_points
    # The README is the PyPI page: its Quickstart must be there.
    assert "## Quickstart" in (metadata.get_payload() or "")


def test_sdist_can_rebuild_everything(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "hfserve/_version.py"} <= names
    assert "tests/conftest.py" in names


def test_wheel_installs_and_runs_in_a_fresh_venv(dist: Dist, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # The test's own environment supplies torch and friends, so nothing is downloaded; the
    # wheel itself goes into the new venv, which comes first on sys.path. A .pth line rather
    # than --system-site-packages: when the tests run in a venv (CI does), the "system" site is
    # the base interpreter's, which lacks the dependencies. Only the directory is added, not
    # its .pth files, so the editable install of this checkout stays out.
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_dir / "_test_env.pth").write_text("".join(f"{path}\n" for path in sorted(outer)))
    bin_dir = venv / "bin"
    _run(
        [
            str(bin_dir / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(dist.wheel),
        ],
        tmp_path,
    )
    where = _run(
        [str(bin_dir / "python"), "-c", "import hfserve.cli.main as m; print(m.__file__)"], tmp_path
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), f"imported {where}, not the installed wheel"

    hfserve = str(bin_dir / "hfserve")
    assert "Usage: hfserve" in _run([hfserve, "--help"], tmp_path).stdout
    assert _run([hfserve, "--version"], tmp_path).stdout.strip() == f"hfserve {__version__}"
    skills = _run([hfserve, "skills", "list"], tmp_path).stdout
    for name in ("text-generation", "embeddings", "text-classification"):
        assert f" {name} " in skills
