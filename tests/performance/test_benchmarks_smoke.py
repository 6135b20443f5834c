"""Every benchmark script runs end to end in ``--smoke`` mode and writes well-formed results.

These check that the scripts keep working (servers start, peers answer, JSON and PNG are
written); they never assert on a measured time.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.performance, pytest.mark.slow]


@pytest.mark.parametrize(
    "name", ["cli_startup", "overhead", "embeddings", "generation", "rerank", "transcription"]
)
def test_smoke_run_writes_results(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    data = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
    assert data["benchmark"] == name
    assert data["smoke"] is True
    assert data["environment"]["versions"]["hfserve"]
    metric = data["metric"]
    assert data["rows"], "no measurements"
    baseline_columns = [key for key in data["rows"][0] if key.startswith("vs ")]
    assert baseline_columns, "rows carry no ratio to a baseline"
    for row in data["rows"]:
        assert row["system"]
        value = row[metric]
        assert isinstance(value, float) and math.isfinite(value) and value > 0
    assert data["targets"]
    for target in data["targets"]:
        assert target["met"] in (True, False)
    if name == "embeddings":
        # The servers are driven by wrk --latency: every server row has its percentiles.
        served = [row for row in data["rows"] if row["system"].startswith("hfserve")]
        assert {row["group"] for row in served} == {"c=1", "c=4"}
        for row in served:
            assert 0 < row["p50_ms"] <= row["p99_ms"], row
            assert row["requests"] > 0
        assert any("wrk" in note for note in data["notes"])
    if name == "generation":
        # The dedicated-CPU tuning of docs/operations.md is measured next to the default.
        systems = {row["system"] for row in data["rows"]}
        assert {"hfserve", "hfserve OMP spin", "transformers serve"} <= systems
    assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
    # The table with ratios is printed for a person running the script.
    assert "target" in result.stdout
