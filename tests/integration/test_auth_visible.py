"""Auth is never a surprise, as a user of ``hfserve serve`` and ``hfserve keys`` sees it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import StartServer, spawn_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WIDE = {"COLUMNS": "250"}  # the banner's long paths stay on one line


def test_a_reachable_host_without_keys_refuses_to_start(tmp_path: Path) -> None:
    server = spawn_server(tmp_path, [], tmp_path / "keys.json", "--host", "0.0.0.0")
    assert server.proc.wait(timeout=120) == 2
    lines = server.log().strip().splitlines()
    assert lines[-1].startswith("error: refusing to serve on 0.0.0.0 without API keys"), lines
    assert "--no-auth" in lines[-1] and "Traceback" not in server.log()


def test_no_auth_on_a_reachable_host_starts_and_says_so(start_server: StartServer) -> None:
    server = start_server("--host", "0.0.0.0", "--no-auth", env=WIDE)
    log = server.log()
    assert "Auth     off: --no-auth" in log
    assert "serving on 0.0.0.0 without API keys (--no-auth)" in log
    assert httpx.get(server.url + "/v1/models").status_code == 200


def test_first_key_under_a_running_server_turns_auth_on_with_a_warning(
    start_server: StartServer, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.json"
    server = start_server(env=WIDE)
    assert "Auth     off: no keys yet (hfserve keys create)" in server.log()
    assert httpx.get(server.url + "/v1/models").status_code == 200

    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "hfserve",
            "keys",
            "create",
            "--name",
            "first",
            "--keys-file",
            str(keys_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key = next(w for w in created.stdout.split() if w.startswith("hf-"))
    deadline = time.monotonic() + 10
    while httpx.get(server.url + "/v1/models").status_code != 401:
        assert time.monotonic() < deadline, "auth never turned on"
        time.sleep(0.05)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 200
    deadline = time.monotonic() + 10
    expected = (
        f"WARNING hfserve.server: auth on: 1 key in {keys_file} (changed while running); "
        "requests without a key now get 401"
    )
    while expected not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)

    restarted = start_server(env=WIDE)
    assert f"Auth     on: 1 key in {keys_file}" in restarted.log()
