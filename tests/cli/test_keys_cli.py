"""``hfserve keys create/list/revoke``: through Typer's runner, ``main()`` and a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfserve.cli.keys import parse_duration
from hfserve.cli.main import app, main
from hfserve.core.keystore import KeyStore


@pytest.fixture
def runner() -> CliRunner:
    # Wide enough that rich wraps nothing the assertions look for.
    return CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


def _create_json(runner: CliRunner, keys_file: Path, *args: str) -> dict[str, object]:
    result = runner.invoke(app, ["keys", "create", "--keys-file", str(keys_file), "--json", *args])
    assert result.exit_code == 0, result.output
    payload: dict[str, object] = json.loads(result.stdout)
    return payload


def test_create_prints_the_key_once_with_a_warning(runner: CliRunner, keys_file: Path) -> None:
    result = runner.invoke(
        app, ["keys", "create", "--name", "ci", "--rpm", "10", "--keys-file", str(keys_file)]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("hf-")
    assert result.stdout == key + "\n"  # stdout is the key alone, for KEY=$(hfserve keys create)
    assert "will not be shown again" in result.stderr
    assert "rpm 10, tpm default, expires never" in result.stderr
    assert KeyStore(keys_file).verify(key).name == "ci"
    assert key not in keys_file.read_text()


def test_create_json_has_key_and_limits(runner: CliRunner, keys_file: Path) -> None:
    before = time.time()
    payload = _create_json(
        runner, keys_file, "--name", "svc", "--rpm", "5", "--tpm", "0", "--expires-in", "12h"
    )
    assert set(payload) >= {"id", "key", "name", "rpm", "tpm", "expires_at", "state"}
    assert (payload["name"], payload["rpm"], payload["tpm"]) == ("svc", 5, 0)
    expires_at = payload["expires_at"]
    assert isinstance(expires_at, float)
    assert before + 12 * 3600 <= expires_at <= time.time() + 12 * 3600
    record = KeyStore(keys_file).verify(str(payload["key"]))
    assert record.id == payload["id"]


def test_create_shows_expiry_in_text_mode(runner: CliRunner, keys_file: Path) -> None:
    result = runner.invoke(
        app,
        ["keys", "create", "--name", "a", "--expires-in", "30d", "--keys-file", str(keys_file)],
    )
    assert result.exit_code == 0, result.output
    expected = time.strftime("%Y-%m-%d", time.localtime(time.time() + 30 * 86400))
    assert f"expires {expected}" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2592000.0), ("12h", 43200.0), ("90m", 5400.0), (" 3600S ", 3600.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"), [("3x", "not a duration"), ("h", "not a duration"), ("0d", "positive")]
)
def test_parse_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


def test_bad_expires_in_is_a_usage_error(runner: CliRunner, keys_file: Path) -> None:
    result = runner.invoke(
        app,
        ["keys", "create", "--name", "a", "--expires-in", "soon", "--keys-file", str(keys_file)],
    )
    assert result.exit_code == 2
    assert "--expires-in" in result.output
    assert "not a duration: 'soon'" in result.output
    assert not keys_file.exists()


def test_negative_rpm_is_a_usage_error(runner: CliRunner, keys_file: Path) -> None:
    result = runner.invoke(
        app, ["keys", "create", "--name", "a", "--rpm", "-1", "--keys-file", str(keys_file)]
    )
    assert result.exit_code == 2
    assert not keys_file.exists()


def test_list_table_shows_ids_not_keys(runner: CliRunner, keys_file: Path) -> None:
    first = _create_json(runner, keys_file, "--name", "[bold]alpha", "--rpm", "0")
    second = _create_json(runner, keys_file, "--name", "beta")
    runner.invoke(app, ["keys", "revoke", str(second["id"]), "--keys-file", str(keys_file)])
    result = runner.invoke(app, ["keys", "list", "--keys-file", str(keys_file)])
    assert result.exit_code == 0, result.output
    for payload in (first, second):
        assert str(payload["id"]) in result.stdout  # never cut: revoke needs it
        assert str(payload["key"]) not in result.stdout
        assert "…" + str(payload["key"])[-4:] in result.stdout
    assert "[bold]alpha" in result.stdout  # names are shown literally, not as markup
    assert "unlimited" in result.stdout
    assert "revoked" in result.stdout
    assert "active" in result.stdout


def test_list_empty(runner: CliRunner, keys_file: Path) -> None:
    result = runner.invoke(app, ["keys", "list", "--keys-file", str(keys_file)])
    assert result.exit_code == 0
    assert result.stdout == ""
    assert f"No API keys in {keys_file}" in result.stderr.replace("\n", "")


def test_list_json_is_public_records(runner: CliRunner, keys_file: Path) -> None:
    created = _create_json(runner, keys_file, "--name", "a", "--tpm", "100")
    result = runner.invoke(app, ["keys", "list", "--json", "--keys-file", str(keys_file)])
    assert result.exit_code == 0
    (listed,) = json.loads(result.stdout)
    assert listed == {k: v for k, v in created.items() if k != "key"}
    assert "key_hash" not in result.stdout


def test_revoke_text_and_json(runner: CliRunner, keys_file: Path) -> None:
    created = _create_json(runner, keys_file, "--name", "a")
    key_id = str(created["id"])
    result = runner.invoke(app, ["keys", "revoke", key_id, "--keys-file", str(keys_file)])
    assert result.exit_code == 0
    assert result.stdout == f"Revoked API key {key_id} (a).\n"
    again = runner.invoke(app, ["keys", "revoke", key_id, "--json", "--keys-file", str(keys_file)])
    assert json.loads(again.stdout)["state"] == "revoked"


def test_errors_become_one_red_line_and_an_exit_code(
    keys_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["keys", "revoke", "key_missing", "--keys-file", str(keys_file)])
    assert info.value.code == 4
    err = capsys.readouterr().err
    assert err == f"error: no API key with id 'key_missing' in {keys_file}\n"


def test_corrupt_file_exits_2(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys_file.write_text("{")
    with pytest.raises(SystemExit) as info:
        main(["keys", "list", "--keys-file", str(keys_file)])
    assert info.value.code == 2
    assert f"API key file {keys_file} is corrupt" in capsys.readouterr().err


def test_keys_file_from_env(runner: CliRunner, keys_file: Path) -> None:
    result = runner.invoke(
        app, ["keys", "create", "--name", "env"], env={"HFSERVE_KEYS_FILE": str(keys_file)}
    )
    assert result.exit_code == 0, result.output
    assert [r.name for r in KeyStore(keys_file).list_keys()] == ["env"]


def test_default_keys_file_is_under_xdg_config_home(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HFSERVE_KEYS_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = runner.invoke(app, ["keys", "create", "--name", "default"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "xdg" / "hfserve" / "keys.json").exists()


def test_keys_without_a_command_shows_help(runner: CliRunner) -> None:
    result = runner.invoke(app, ["keys"])
    assert "create" in result.output
    assert "revoke" in result.output


def test_python_m_hfserve_keys_round_trip(keys_file: Path) -> None:
    env = {**os.environ, "HFSERVE_KEYS_FILE": str(keys_file)}

    def run(*args: str) -> object:
        done = subprocess.run(
            [sys.executable, "-m", "hfserve", "keys", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(done.stdout)

    created = run("create", "--name", "proc", "--rpm", "7")
    assert isinstance(created, dict)
    assert KeyStore(keys_file).verify(created["key"]).rpm == 7
    listed = run("list")
    assert isinstance(listed, list)
    assert [item["id"] for item in listed] == [created["id"]]
    revoked = run("revoke", created["id"])
    assert isinstance(revoked, dict)
    assert revoked["state"] == "revoked"


def test_list_keeps_ids_whole_on_a_narrow_terminal(keys_file: Path) -> None:
    narrow = CliRunner(env={"COLUMNS": "80"})
    created = _create_json(narrow, keys_file, "--name", "a rather long descriptive key name")
    result = narrow.invoke(app, ["keys", "list", "--keys-file", str(keys_file)])
    assert str(created["id"]) in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
