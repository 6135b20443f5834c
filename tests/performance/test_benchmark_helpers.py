"""The pure helpers of ``benchmarks/_common.py``: wrk parsing, ratios, targets, result files."""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.performance

WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:8000/v1/models
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.16ms    1.20ms  30.01ms   90.00%
    Req/Sec     6.30k   300.00     7.00k    80.00%
  50200 requests in 8.00s, 9.00MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   6275.00
Transfer/sec:      1.12MB
"""

# What ``wrk --latency`` adds after the thread stats (its units vary line by line).
LATENCY_DISTRIBUTION = """  Latency Distribution
     50%  850.00us
     75%    9.50ms
     90%   12.25ms
     99%    1.50s
"""


@pytest.fixture
def common() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import _common

        yield _common
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_parse_wrk_reads_throughput_errors_and_latency(common: ModuleType) -> None:
    result = common.parse_wrk(WRK_OUTPUT)
    assert result.requests_per_second == 6275.0
    assert result.requests == 50200
    assert result.errors == 3
    assert result.latency_avg_ms == pytest.approx(10.16)


def test_parse_wrk_converts_microseconds_and_counts_socket_errors(common: ModuleType) -> None:
    text = WRK_OUTPUT.replace("10.16ms", "950.00us").replace(
        "  Non-2xx or 3xx responses: 3\n",
        "  Socket errors: connect 0, read 2, write 0, timeout 0\n",
    )
    result = common.parse_wrk(text)
    assert result.latency_avg_ms == pytest.approx(0.95)
    assert result.errors == 2


def test_parse_wrk_rejects_unexpected_output_and_total_failure(common: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="unexpected wrk output"):
        common.parse_wrk("wrk: command failed")
    with pytest.raises(RuntimeError, match="every wrk request failed"):
        common.parse_wrk(WRK_OUTPUT.replace("responses: 3", "responses: 50200"))


def test_parse_wrk_reads_latency_percentiles_in_every_unit(common: ModuleType) -> None:
    text = WRK_OUTPUT.replace("    Req/Sec", LATENCY_DISTRIBUTION + "    Req/Sec")
    result = common.parse_wrk(text)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p90_ms == pytest.approx(12.25)
    assert result.p99_ms == pytest.approx(1500.0)
    # The average still comes from the thread stats, not from the distribution's lines.
    assert result.latency_avg_ms == pytest.approx(10.16)
    assert result.requests_per_second == 6275.0


def test_parse_wrk_reads_minutes_and_the_distribution_after_the_stats(common: ModuleType) -> None:
    # wrk prints the distribution after the Req/Sec line, and minutes past 60 s.
    text = WRK_OUTPUT.replace(
        "  50200 requests", LATENCY_DISTRIBUTION.replace("1.50s", "1.50m") + "  50200 requests"
    )
    result = common.parse_wrk(text)
    assert result.p50_ms == pytest.approx(0.85)
    assert result.p99_ms == pytest.approx(90_000.0)


def test_parse_wrk_without_latency_block_has_no_percentiles(common: ModuleType) -> None:
    result = common.parse_wrk(WRK_OUTPUT)
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == (None, None, None)


def test_run_wrk_refuses_fractional_seconds(common: ModuleType) -> None:
    # wrk reads "0.5s" as a usage error; say so before starting it.
    with pytest.raises(ValueError, match="whole seconds"):
        common.run_wrk("http://127.0.0.1:1/", connections=1, seconds=0.5)
    with pytest.raises(ValueError, match="whole seconds"):
        common.run_wrk("http://127.0.0.1:1/", connections=1, seconds=1, request_timeout=0)


# Bodies that would end a naive Lua string early: quotes, backslashes, the closing brackets
# of levels 0-2, a body ending in "]=" (with "]=]" right after it), nested arrays
# (Lua 5.1 rejects "[[" inside "[[...]]"), escaped line breaks and non-ASCII text.
TRICKY_BODIES: list[Any] = [
    {"model": "minilm", "input": "the of and to in is you that it he was for"},
    {"input": 'say "hi" \\ there', "x": "]]"},
    {"input": "a ]=] b ]==] c", "nested": [[1, 2], [3]]},
    {"input": "line\nbreak\r\ttab \u00e9\u2713"},
    ["ends with", "]="],
]


def _encoded(body: Any) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _lua_strings(script: str) -> list[str]:
    """The long-bracket strings of the script's ``bodies`` table, decoded as Lua would."""
    table = script.split("local bodies = {\n", 1)[1].split("\n}\n", 1)[0]
    strings = []
    for line in table.splitlines():
        match = re.fullmatch(r"  \[(=*)\[(.*)\]\1\],", line)
        assert match, f"not a long-bracket string literal: {line!r}"
        level, text = match.groups()
        assert level, "level 0 ([[...]]) is not used"
        # A Lua long string ends at the first closing bracket of its level.
        assert f"]{level}]" not in text + "]", f"{line!r} would end early"
        strings.append(text)
    return strings


def test_wrk_post_script_holds_each_body_exactly(common: ModuleType, tmp_path: Path) -> None:
    path = common.write_wrk_post_script(tmp_path / "post.lua", TRICKY_BODIES)

    script = path.read_text(encoding="utf-8")
    assert _lua_strings(script) == [_encoded(body) for body in TRICKY_BODIES]
    assert "function init(args)" in script
    assert 'wrk.format("POST", nil, nil, body)' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert "function request()" in script
    # Balanced blocks: one "end" per function and loop.
    assert len(re.findall(r"^\s*(?:function|for)\b", script, re.M)) == len(
        re.findall(r"^\s*end$", script, re.M)
    )


def test_lua_long_string_picks_a_level_the_text_cannot_close(common: ModuleType) -> None:
    assert common._lua_long_string("plain") == "[=[plain]=]"
    assert common._lua_long_string("a ]=] b") == "[==[a ]=] b]==]"
    assert common._lua_long_string("ends ]=") == "[==[ends ]=]==]"
    assert common._lua_long_string("]=] ]==]") == "[===[]=] ]==]]===]"
    with pytest.raises(ValueError, match="line breaks"):
        common._lua_long_string("a\nb")


def test_wrk_post_script_needs_a_body(common: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one body"):
        common.write_wrk_post_script(tmp_path / "post.lua", [])


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with an empty 200 and keeps what it received."""

    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    received: list[tuple[str, str | None, str | None, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(
            (self.path, self.headers["Content-Type"], self.headers["Authorization"], body)
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.integration
def test_wrk_runs_the_post_script_and_sends_every_body(common: ModuleType, tmp_path: Path) -> None:
    # The real check of the Lua: wrk's own LuaJIT runs it and a server records the bytes.
    received: list[tuple[str, str | None, str | None, bytes]] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        script = common.write_wrk_post_script(tmp_path / "post.lua", TRICKY_BODIES)
        result = common.run_wrk(
            f"http://127.0.0.1:{server.server_address[1]}/v1/embeddings",
            connections=1,
            seconds=1,
            headers={"Authorization": "Bearer k"},
            script=script,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

    assert result.errors == 0
    assert result.p50_ms is not None and result.p99_ms is not None
    expected = [_encoded(body).encode() for body in TRICKY_BODIES]
    assert len(received) > len(expected), "wrk did not go round the bodies"
    assert {(path, ctype, auth) for path, ctype, auth, _ in received} == {
        ("/v1/embeddings", "application/json", "Bearer k")
    }
    bodies = [body for *_, body in received]
    assert set(bodies) == set(expected)
    # One connection: each body is followed by the next one, round and round (wrk takes
    # one request itself before the run, so the first one received may be any of them).
    for this, after in itertools.pairwise(bodies):
        assert after == expected[(expected.index(this) + 1) % len(expected)]


def test_target_met_both_directions(common: ModuleType) -> None:
    assert common.Target("ratio", 0.9, 0.8).met is True
    assert common.Target("ratio", 0.7, 0.8).met is False
    assert common.Target("ms", 120.0, 150.0, " ms", False).met is True
    assert common.Target("ms", 151.0, 150.0, " ms", False).met is False
    assert common.Target("ratio", None, 0.8).met is None


def test_report_ratios_are_per_group_and_written(common: ModuleType, tmp_path: Path) -> None:
    report = common.Report("demo", "Demo", "req/s", smoke=True)
    report.add("base", 100.0, group="c=1")
    report.add("ours", 250.0, group="c=1")
    report.add("base", 200.0, group="c=8")
    report.add("ours", 100.0, group="c=8")
    report.add("lonely", 5.0, group="c=99")
    report.add_ratios("base")
    ratios = {(r["system"], r["group"]): r["vs base"] for r in report.rows}
    assert ratios[("ours", "c=1")] == 2.5
    assert ratios[("ours", "c=8")] == 0.5
    assert ratios[("lonely", "c=99")] is None
    report.targets.append(common.Target("ours >= 2x", 2.5, 2.0))
    report.notes.append("a note")

    path = report.write(tmp_path)

    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["rows"] == report.rows
    assert data["targets"] == [
        {
            "name": "ours >= 2x",
            "value": 2.5,
            "goal": 2.0,
            "unit": "x",
            "higher_is_better": True,
            "met": True,
        }
    ]
    assert data["environment"]["cpus"] >= 1
    assert (tmp_path / "demo.png").read_bytes().startswith(b"\x89PNG")


def test_free_port_is_bindable(common: ModuleType) -> None:
    import socket

    port = common.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
