"""The pure helpers of ``benchmarks/_common.py``: wrk parsing, ratios, targets, result files."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

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
