"""Import lightness: the core and the light CLI commands never load the heavy stack.

Each check runs in a fresh interpreter, because this test process has long since imported
torch and friends for other tests.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hfserve

PACKAGE = Path(hfserve.__path__[0])
CORE_MODULES = sorted(
    f"hfserve.core.{p.stem}" for p in (PACKAGE / "core").glob("*.py") if p.stem != "__init__"
)
HEAVY = ("torch", "transformers", "starlette", "uvicorn")
# What core modules may import at module level besides the standard library.
CORE_ALLOWED = ("hfserve.core", "hfserve.errors")


def _heavy_modules_after(code: str, tmp_path: Path) -> list[str]:
    """Run ``code`` in a fresh interpreter; return which heavy packages it left imported."""
    report = tmp_path / "modules.json"
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        with open({str(report)!r}, "w") as fh:
            json.dump(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}), fh)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(report.read_text())
    return loaded


def test_there_are_core_modules_to_check() -> None:
    assert {"hfserve.core.keystore", "hfserve.core.rate_limiter"} <= set(CORE_MODULES)


@pytest.mark.parametrize("module", ["hfserve.core", *CORE_MODULES])
def test_core_imports_nothing_heavy(module: str, tmp_path: Path) -> None:
    assert _heavy_modules_after(f"import {module}", tmp_path) == []


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["keys", "--help"], ["keys", "list"], ["keys", "create", "--name", "t", "--json"]],
    ids=["help", "keys-help", "keys-list", "keys-create"],
)
def test_light_cli_commands_import_nothing_heavy(argv: list[str], tmp_path: Path) -> None:
    args = [*argv]
    if argv[0] == "keys" and "--help" not in argv:
        args += ["--keys-file", str(tmp_path / "keys.json")]
    code = f"""
        from hfserve.cli.main import main
        try:
            main({args!r})
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
    """
    assert _heavy_modules_after(code, tmp_path) == []


def test_the_check_detects_a_heavy_import(tmp_path: Path) -> None:
    # Guards the guard: the same probe does see starlette when something imports it.
    assert "starlette" in _heavy_modules_after("import starlette", tmp_path)


def _top_level_imports(path: Path) -> list[str]:
    """Module-level imports (not those inside functions, which may be lazy by design)."""
    names: list[str] = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names.append(node.module)
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_modules_import_only_the_standard_library(module: str) -> None:
    path = PACKAGE / "core" / f"{module.rsplit('.', 1)[1]}.py"
    foreign = [
        name
        for name in _top_level_imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and not any(name == ok or name.startswith(ok + ".") for ok in CORE_ALLOWED)
    ]
    assert foreign == [], f"{module} imports {foreign} at module level"
