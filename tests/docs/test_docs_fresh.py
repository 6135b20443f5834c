"""The generated reference pages match the code, and the generator does what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from hfserve import _docgen
from hfserve.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pages_are_fresh() -> None:
    stale = _docgen.check(ROOT)
    assert stale == [], f"regenerate with `{_docgen.REGENERATE}`: {stale}"


def test_check_flags_missing_and_edited_pages_and_write_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "stale: docs/cli.md" in capsys.readouterr().err

    assert _docgen.main(["--root", str(tmp_path)]) == 0
    assert "wrote docs/configuration.md" in capsys.readouterr().out
    assert _docgen.main(["--check", "--root", str(tmp_path)]) == 0
    assert _docgen.write(tmp_path) == []

    page = tmp_path / _docgen.CONFIG_PAGE
    page.write_text(page.read_text(encoding="utf-8").replace("`8000`", "`9000`"), encoding="utf-8")
    assert _docgen.check(tmp_path) == [_docgen.CONFIG_PAGE]
    assert _docgen.write(tmp_path) == [_docgen.CONFIG_PAGE]
    assert "`8000`" in page.read_text(encoding="utf-8")


def test_configuration_page_lists_every_setting_with_env_var_and_flag() -> None:
    page = _docgen.render_configuration()
    rows = {
        line.split(" | ")[0].strip("| `"): line
        for line in page.splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == set(Settings.model_fields)
    for name in Settings.model_fields:
        assert f"`HFSERVE_{name.upper()}`" in rows[name]
    assert "`--max-queue`" in rows["max_queue"]
    assert "`--model`" in rows["models"] and "`--no-auth`" in rows["auth"]
    assert "`--response-cache` / `--no-response-cache`" in rows["response_cache"]
    assert "| — |" in rows["load_timeout"]  # no serve flag: env or config file only
    assert "(64MiB)" in rows["response_cache_memory"]
    assert "~/.config/hfserve/keys.json" in rows["keys_file"]
    assert "one of `auto`, `float32`" in rows["dtype"]


def test_cli_page_has_every_command_and_plain_text_help() -> None:
    page = _docgen.render_cli()
    for command in ("serve", "keys create", "keys revoke", "skills search", "k8s render", "bench"):
        assert f"\n## hfserve {command}\n" in page
        assert f"(#hfserve-{command.replace(' ', '-')})" in page
    assert "--redis-url" in page and "--grace-period" in page
    assert "\x1b[" not in page
    assert all(len(line) <= 100 for line in page.splitlines() if line.startswith(("│", "╭", "╰")))


def test_help_text_does_not_depend_on_the_callers_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _docgen._help_text(["keys", "list"])
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert _docgen._help_text(["keys", "list"]) == expected


def test_help_text_of_an_unknown_command_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="no-such-command --help failed"):
        _docgen._help_text(["no-such-command"])


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (int, "int"),
        (Path, "path"),
        (Literal["a", "b"], "one of `a`, `b`"),
        (str | None, "str (optional)"),
        (int | str, "int or str"),
        (list[str], "list of str (comma-separated in env)"),
    ],
)
def test_type_names(annotation: object, expected: str) -> None:
    assert _docgen._type_name(annotation) == expected


def test_human_bytes_only_for_exact_units() -> None:
    assert _docgen._human_bytes(8 * 1024**3) == "8GiB"
    assert _docgen._human_bytes(2048) == "2KiB"
    assert _docgen._human_bytes(1500) == "1500"


def test_module_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hfserve._docgen", "--check", "--root", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
