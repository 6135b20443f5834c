"""``hfserve bench`` end to end against the loopback fake server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfserve.cli.main import app, main
from tests.bench.fake_openai import FakeServer, refused_url, serve


@pytest.fixture(scope="module")
def server_module() -> Iterator[FakeServer]:
    """One fake server for this module."""
    yield from serve()


@pytest.fixture
def server(server_module: FakeServer) -> FakeServer:
    """The module's fake server, reset."""
    server_module.reset()
    return server_module


def test_bench_prints_the_table_and_writes_json(server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--url",
            server.url,
            "-n",
            "6",
            "-c",
            "2",
            "--warmup",
            "2",
            "--seed",
            "3",
            "--max-tokens",
            "4",
            "--extra-body",
            '{"ignore_eos": true}',
            "--json",
            str(out),
        ],
        env={"HFSERVE_API_KEY": "sk-env", "COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    for label in ("Requests ok", "Request throughput (req/s)", "Time to first token", "p99"):
        assert label in result.output
    data = json.loads(out.read_text())
    assert data["completed"] == 6 and data["failed"] == 0
    assert data["config"]["warmup"] == 2 and data["config"]["concurrency"] == 2
    assert data["mean_ttft_ms"] is not None and data["total_output_tokens"] == 24
    assert len(server.behaviour.seen) == 8
    assert all(b["ignore_eos"] is True and b["max_tokens"] == 4 for b in server.behaviour.seen)
    assert set(server.behaviour.auth) == {"Bearer sk-env"}


def test_bench_embeddings_without_streaming(server: FakeServer) -> None:
    result = CliRunner().invoke(
        app, ["bench", "--url", server.url, "-e", "embeddings", "-n", "2", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "Output token throughput" not in result.output
    assert all("input" in b for b in server.behaviour.seen)


def test_every_request_failing_exits_non_zero(server: FakeServer) -> None:
    server.behaviour.statuses = [503]
    result = CliRunner().invoke(app, ["bench", "--url", server.url, "-n", "3"])
    assert result.exit_code == 1
    assert "every request failed (HTTP 503 x3): fake 503" in result.stderr


def test_unwritable_json_path_is_refused_before_the_run(server: FakeServer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--url", server.url, "--json", str(tmp_path)])
    # Typer's error box wraps at the terminal width, which differs between machines.
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "is a directory" in flat
    assert server.behaviour.seen == []


def test_json_write_failure_is_one_line(server: FakeServer, tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "out.json"
    result = CliRunner().invoke(
        app, ["bench", "--url", server.url, "-n", "1", "--json", str(target)]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot write") and result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--extra-body", "{nope"], "not JSON"),
        (["--extra-body", "[1]"], "must be a JSON object"),
        (["--endpoint", "images"], "images"),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "--url", "http://127.0.0.1:9", *args])
    assert result.exit_code == 2 and message in result.output


def test_target_down_and_config_errors_exit_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as down:
        main(["bench", "--url", refused_url(), "-n", "1", "-q"])
    assert down.value.code not in (0, None)
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach http://127.0.0.1:") and err.count("\n") == 1

    with pytest.raises(SystemExit) as bad:
        main(["bench", "--url", "http://127.0.0.1:9", "--requests", "3", "--duration", "1"])
    assert bad.value.code == 2
    assert "give --requests or --duration, not both" in capsys.readouterr().err


def test_importing_the_cli_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, hfserve.cli.bench; "
        "print(sorted(m for m in ('torch', 'transformers', 'starlette', 'httpx', 'hfserve.bench') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
