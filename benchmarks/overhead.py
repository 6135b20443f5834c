"""Overhead of hfserve's middleware stack: the full stack vs a bare Starlette app, with wrk.

hfserve runs with everything a production request passes through: request id, metrics,
body limit, API-key auth with a real key, and a per-key rate limit (set high enough that it
never refuses, so it is consulted on every request). The route is ``GET /v1/models``. The
baseline is a bare Starlette app returning the very same bytes on the same uvicorn settings
(uvloop + httptools, no access log). Both are driven by ``wrk`` (C): a Python load generator
saturates near 1k req/s on two cores and would measure itself.

The machine is noisy (±15% from one second to the next), so both servers stay up and are
measured in interleaved rounds after a warm-up, in alternating order (bare first, then hfserve
first, ...) so that drift hits both alike. Each system's figure is the median of its rounds;
the ratio is the ratio of the medians, and the spread of the per-round ratios is reported.

Target: hfserve >= 0.6x the bare app's requests/s (issue 18; 0.8x is the later goal).

    python benchmarks/overhead.py [--smoke]
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import (
    LOOPBACK,
    Report,
    ServerProcess,
    Target,
    free_port,
    hfserve_serve,
    parse_args,
    run_wrk,
    temp_dir,
)

from hfserve.core.keystore import KeyStore
from hfserve.runtime.demo import minilm_path

HERE = Path(__file__).resolve().parent
TARGET = 0.6


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``overhead.json`` / ``overhead.png``."""
    args = parse_args(__doc__ or "", argv)
    seconds, rounds, connections = (1.0, 1, 8) if args.smoke else (6.0, 5, 64)
    report = Report("overhead", "Middleware overhead: GET /v1/models", "req/s", args.smoke)
    with temp_dir("hfserve-overhead-") as tmp:
        keys_file = tmp / "keys.json"
        # A real key with a real (never reached) limit: auth and the rate limiter both run.
        _, key = KeyStore(keys_file).create("bench", rpm=10**9, tpm=0)
        port = free_port()
        hfserve = hfserve_serve(
            {"minilm": minilm_path()},
            port,
            "--keys-file",
            str(keys_file),
            "--no-response-cache",
        )
        with hfserve:
            url = f"http://{LOOPBACK}:{port}/v1/models"
            headers = {"Authorization": f"Bearer {key}"}
            body = httpx.get(url, headers=headers).raise_for_status().text
            bare_port = free_port()
            bare = ServerProcess(
                "bare-starlette",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "_bare_app:app",
                    "--host",
                    LOOPBACK,
                    "--port",
                    str(bare_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                ready_url=f"http://{LOOPBACK}:{bare_port}/v1/models",
                env={"BARE_APP_BODY": body},
                cwd=HERE,
            )
            with bare:
                bare_url = f"http://{LOOPBACK}:{bare_port}/v1/models"
                servers = [
                    _System("bare starlette", bare_url, bare.pid),
                    _System("hfserve", url, hfserve.pid),
                ]
                # Warm both up (first connections, caches, lazily built state), unmeasured.
                for system in servers:
                    run_wrk(system.url, connections=connections, seconds=1, headers=headers)
                for n in range(rounds):
                    for system in servers if n % 2 == 0 else servers[::-1]:
                        system.measure(connections, seconds, headers)
    bare_system, ours = servers
    round_ratios = [
        a / b
        for a, b in zip(ours.requests_per_second, bare_system.requests_per_second, strict=True)
    ]
    for system in servers:
        values = system.requests_per_second
        report.add(
            system.name,
            statistics.median(values),
            group=f"c={connections}",
            rounds=len(values),
            min=min(values),
            max=max(values),
            latency_avg_ms=statistics.median(system.latency_ms),
            cpu_us_per_request=statistics.median(system.cpu_us) if system.cpu_us else None,
        )
    report.add_ratios("bare starlette")
    ratio = report.measured("hfserve", f"c={connections}") / report.measured(
        "bare starlette", f"c={connections}"
    )
    report.targets.append(Target(f"hfserve >= {TARGET}x bare Starlette req/s", ratio, TARGET))
    report.notes.append(
        f"wrk -t1 -c{connections} -d{seconds:g}s, median of {rounds} interleaved rounds "
        "(order alternating) after a 1 s warm-up of each; both servers: one uvicorn worker, "
        "uvloop + httptools, log level warning"
    )
    report.notes.append(
        "per-round ratios hfserve/bare: "
        + ", ".join(f"{r:.2f}" for r in round_ratios)
        + f" (median {statistics.median(round_ratios):.2f})"
    )
    report.notes.append(
        "cpu_us_per_request: the server process's CPU time (user + system, /proc) per request "
        "served, median over the rounds; steadier than req/s on a shared machine"
    )
    report.write(args.out)
    return 0


@dataclass
class _System:
    """One server under test and what its rounds measured."""

    name: str
    url: str
    pid: int
    requests_per_second: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def measure(self, connections: int, seconds: float, headers: dict[str, str]) -> None:
        """One round of ``wrk`` against this server."""
        cpu_before = _cpu_seconds(self.pid)
        result = run_wrk(self.url, connections=connections, seconds=seconds, headers=headers)
        cpu_after = _cpu_seconds(self.pid)
        if result.errors:
            raise RuntimeError(f"{self.name}: {result.errors} failed requests")
        self.requests_per_second.append(result.requests_per_second)
        self.latency_ms.append(result.latency_avg_ms)
        if cpu_before is not None and cpu_after is not None and result.requests:
            self.cpu_us.append((cpu_after - cpu_before) / result.requests * 1e6)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: utime and stime are fields 14 and 15 of stat(5), in ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
