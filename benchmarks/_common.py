"""Shared plumbing of the benchmark scripts: processes on loopback, load, results, charts.

Every script starts what it measures as a child process on a free 127.0.0.1 port, in its own
process group (LitServe and uvicorn may fork workers: stopping the group stops them all),
waits until it answers, drives it, and stops the group. Results go to
``benchmarks/results/NAME.json`` and ``NAME.png``; each row carries its ratio to the baseline
measured in the same run, so numbers from different machines are never mixed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from hfserve.bench import BenchConfig, Endpoint, result_to_dict, run_benchmark

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOOPBACK = "127.0.0.1"
# Loading a model (torch import, weights) takes seconds on a 2-core machine; a peer that
# builds its own environment on first start takes longer still.
READY_TIMEOUT = 300.0


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every benchmark script takes: ``--smoke`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--smoke", action="store_true", help="Tiny sizes and few requests: checks it runs."
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="Folder for the JSON and PNG results."
    )
    return parser.parse_args(argv)


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server started as a child in its own process group; stopped with its whole group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready_url: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready_url = ready_url
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"hfserve-bench-{name}-", suffix=".log", delete=False
        )
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The child's process id (also its process group id)."""
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        """Start the process and wait until ``ready_url`` answers 200.

        Raises:
            RuntimeError: the process exited or did not become ready in time.
        """
        self._process = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.ready_url).status_code == 200:
                        return
                # A benchmark script, not a core component: polling a child process is the
                # only readiness signal a foreign server gives us.
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {READY_TIMEOUT:.0f}s:\n{self.log_tail()}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Workers the leader forked may outlive it: the group goes, whatever the leader did.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self._process = None
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process printed."""
        self._log.flush()
        text = Path(self._log.name).read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def hfserve_serve(
    models: Mapping[str, str | Path], port: int, *extra: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """``hfserve serve`` for ``models`` on loopback, ready when every model is loaded."""
    argv = [sys.executable, "-m", "hfserve", "serve", "--host", LOOPBACK, "--port", str(port)]
    for alias, path in models.items():
        argv += ["--model", f"{alias}={path}"]
    argv += ["--log-level", "warning", *extra]
    return ServerProcess("hfserve", argv, ready_url=f"http://{LOOPBACK}:{port}/ready", env=env)


def bench(
    url: str,
    *,
    model: str | None,
    endpoint: Endpoint,
    concurrency: int,
    warmup: int,
    requests: int | None = None,
    duration: float | None = None,
    prompt_tokens: int = 32,
    max_tokens: int = 64,
    extra_body: dict[str, Any] | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """One closed-loop ``hfserve bench`` run, as the JSON ``hfserve bench --json`` writes.

    Raises:
        RuntimeError: a measured request failed (a benchmark of errors measures nothing).
    """
    config = BenchConfig(
        url=url,
        model=model,
        endpoint=endpoint,
        api_key=api_key,
        concurrency=concurrency,
        requests=requests,
        duration=duration,
        warmup=warmup,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        extra_body=extra_body or {},
        timeout=600.0,
    )
    result = asyncio.run(run_benchmark(config))
    data = result_to_dict(result)
    if data["failed"]:
        raise RuntimeError(f"{url}: {data['failures']} {data['failure_messages']}")
    del data["requests"]  # per-request rows would drown the summary
    return data


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What ``wrk`` reported for one run (percentiles: ``None`` without ``--latency``)."""

    requests_per_second: float
    requests: int
    errors: int
    latency_avg_ms: float
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None


_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
# wrk prints times in the largest unit that keeps the number >= 1: us, ms, s, then m and h.
_TIME = r"([\d.]+)(us|ms|s|m|h)\b"
_WRK_LATENCY = re.compile(r"Latency\s+" + _TIME)
_WRK_DISTRIBUTION = re.compile(r"Latency Distribution\s*\n((?:[ \t]+[\d.]+%[ \t]+\S+\n?)+)")
_WRK_PERCENTILE = re.compile(r"([\d.]+)%\s+" + _TIME)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def run_wrk_checked(
    url: str, server: ServerProcess, *, connections: int, seconds: int, script: Path, label: str
) -> WrkResult:
    """``run_wrk`` with a Lua script, refusing a run with errors; a 60 s request timeout, far
    above any latency here (a slow answer is a slow answer, not a wrk "timeout" error).

    Raises:
        RuntimeError: a request failed (non-2xx or a socket error): errors measure nothing.
    """
    result = run_wrk(
        url, connections=connections, seconds=seconds, script=script, request_timeout=60
    )
    if result.errors:
        raise RuntimeError(
            f"{label} at c={connections}: {result.errors} of {result.requests} requests failed "
            f"(non-2xx or socket errors)\n{server.log_tail()}"
        )
    return result


def run_wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    request_timeout: float | None = None,
) -> WrkResult:
    """Drive ``url`` with ``wrk`` (a C load generator: a Python one saturates first).

    Args:
        script: a Lua script for ``wrk -s`` (e.g. from ``write_wrk_post_script``).
        request_timeout: seconds after which wrk counts a request as a timeout (its default
            is 2 s, less than a slow server's tail at high concurrency).

    Raises:
        ValueError: ``seconds`` or ``request_timeout`` is not a whole number of seconds
            (wrk reads durations as integers and rejects ``0.5s``).
        RuntimeError: ``wrk`` is not installed, failed, or every request failed.
    """
    for value in (seconds, request_timeout):
        if value is not None and (value < 1 or value != int(value)):
            raise ValueError(f"wrk takes whole seconds >= 1, not {value!r}")
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency"]
    for name, header in (headers or {}).items():
        argv += ["-H", f"{name}: {header}"]
    if script is not None:
        argv += ["-s", str(script)]
    if request_timeout is not None:
        argv += ["--timeout", f"{request_timeout:g}s"]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    if done.returncode != 0:  # e.g. a Lua error in the script: wrk says which on stderr
        raise RuntimeError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> WrkResult:
    """Parse ``wrk``'s text report, with its ``--latency`` percentiles when present.

    Raises:
        RuntimeError: the report has no throughput, or every request failed.
    """
    rps = _WRK_RPS.search(output)
    total = _WRK_TOTAL.search(output)
    latency = _WRK_LATENCY.search(output)
    if rps is None or total is None or latency is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = _WRK_NON_2XX.search(output)
    socket_errors = _WRK_SOCKET.search(output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    percentiles: dict[float, float] = {}
    distribution = _WRK_DISTRIBUTION.search(output)
    if distribution is not None:
        for line in _WRK_PERCENTILE.finditer(distribution.group(1)):
            percentiles[float(line.group(1))] = float(line.group(2)) * _UNIT_MS[line.group(3)]
    result = WrkResult(
        requests_per_second=float(rps.group(1)),
        requests=int(total.group(1)),
        errors=errors,
        latency_avg_ms=float(latency.group(1)) * _UNIT_MS[latency.group(2)],
        p50_ms=percentiles.get(50.0),
        p90_ms=percentiles.get(90.0),
        p99_ms=percentiles.get(99.0),
    )
    if result.errors and result.errors >= result.requests:
        raise RuntimeError(f"every wrk request failed:\n{output}")
    return result


def write_wrk_post_script(path: Path, bodies: Sequence[Any]) -> Path:
    """Write a wrk Lua script that POSTs ``bodies`` as JSON, in order, round and round.

    Every request of a run differs (a server's response or prefix cache cannot turn the
    benchmark into a cache benchmark), yet no JSON is encoded while wrk runs: the requests
    are formatted once per wrk thread, in ``init``. Headers given to wrk with ``-H`` are kept;
    the path is the URL's.

    Raises:
        ValueError: ``bodies`` is empty.
    """
    if not bodies:
        raise ValueError("a wrk POST script needs at least one body")
    literals = [
        _lua_long_string(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
        for body in bodies
    ]
    table = "".join(f"  {literal},\n" for literal in literals)
    path.write_text(
        "-- Written by benchmarks/_common.py (write_wrk_post_script): POST each JSON body\n"
        "-- in turn. Each wrk thread runs its own copy, so each thread starts at the first.\n"
        f"local bodies = {{\n{table}}}\n"
        "local requests = {}\n"
        "local last = 0\n"
        "\n"
        "function init(args)\n"
        '  wrk.headers["Content-Type"] = "application/json"\n'
        "  for i, body in ipairs(bodies) do\n"
        '    requests[i] = wrk.format("POST", nil, nil, body)\n'
        "  end\n"
        "end\n"
        "\n"
        "function request()\n"
        "  last = last % #requests + 1\n"
        "  return requests[last]\n"
        "end\n",
        encoding="utf-8",
    )
    return path


def _lua_long_string(text: str) -> str:
    """``text`` as a Lua long-bracket string literal (``[==[...]==]``), byte for byte.

    A long string has no escapes, so the level (the count of ``=``) is the lowest whose
    closing bracket cannot occur early: not inside ``text``, nor formed by its tail and the
    closing bracket itself (``text`` ending in ``]=`` and a level-1 ``]=]``). Level 0
    (``[[...]]``) is never used: Lua 5.1 rejects a ``[[`` nested inside it, and JSON has
    nested arrays. Lua drops a newline right after the opening bracket and turns CR/LF pairs
    into LF, so ``text`` must hold no raw line breaks (JSON encodes them as escapes).

    Raises:
        ValueError: ``text`` contains a carriage return or a newline.
    """
    if "\n" in text or "\r" in text:
        raise ValueError("a Lua long string cannot hold raw line breaks byte for byte")
    level = 1
    while f"]{'=' * level}]" in text + "]":
        level += 1
    equals = "=" * level
    return f"[{equals}[{text}]{equals}]"


@dataclass(slots=True)
class Target:
    """One target of the issue: ``value`` compared with ``goal`` (``higher`` is better or not)."""

    name: str
    value: float | None
    goal: float
    unit: str = "x"
    higher_is_better: bool = True

    @property
    def met(self) -> bool | None:
        """Whether the target is met; ``None`` when it was not measured."""
        if self.value is None:
            return None
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``met``."""
        return {**asdict(self), "met": self.met}


@dataclass(slots=True)
class Report:
    """The rows, targets and notes of one benchmark run, written as JSON, PNG and a table."""

    name: str
    title: str
    metric: str
    smoke: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, system: str, value: float, *, group: str = "", **extra: Any) -> None:
        """A measured row: ``value`` of ``metric`` for ``system`` (within ``group``, e.g. c=8)."""
        self.rows.append({"system": system, "group": group, self.metric: value, **extra})

    def value(self, system: str, group: str = "") -> float | None:
        """The measured value of one row, if it was measured."""
        for row in self.rows:
            if row["system"] == system and row["group"] == group:
                return float(row[self.metric])
        return None

    def measured(self, system: str, group: str = "") -> float:
        """The value of a row that must exist.

        Raises:
            KeyError: no such row was measured.
        """
        value = self.value(system, group)
        if value is None:
            raise KeyError(f"{system} was not measured at {group or 'the only level'}")
        return value

    def add_ratios(self, baseline: str) -> None:
        """Give every row its ratio to ``baseline`` in the same group (same run, same machine)."""
        for row in self.rows:
            base = self.value(baseline, row["group"])
            row[f"vs {baseline}"] = row[self.metric] / base if base else None

    def write(self, out: Path) -> Path:
        """Write ``NAME.json`` and ``NAME.png`` to ``out``, print the table; the JSON's path."""
        out.mkdir(parents=True, exist_ok=True)
        data = {
            "benchmark": self.name,
            "title": self.title,
            "metric": self.metric,
            "smoke": self.smoke,
            "environment": environment(),
            "rows": self.rows,
            "targets": [t.to_dict() for t in self.targets],
            "notes": self.notes,
        }
        path = out / f"{self.name}.json"
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        self._chart(out / f"{self.name}.png")
        self.print()
        return path

    def print(self) -> None:
        """The rows and targets as rich tables on stdout."""
        from rich.console import Console
        from rich.table import Table

        console = Console()
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        table = Table(title=f"{self.title}{' (smoke)' if self.smoke else ''}")
        for column in columns:
            table.add_column(column, justify="left" if column in {"system", "group"} else "right")
        for row in self.rows:
            table.add_row(*(_cell(row.get(column)) for column in columns))
        console.print(table)
        for target in self.targets:
            verdict = {True: "[green]met[/]", False: "[red]NOT met[/]", None: "not measured"}
            value = "-" if target.value is None else f"{target.value:,.2f}{target.unit}"
            sign = ">=" if target.higher_is_better else "<="
            console.print(
                f"target {target.name}: {value} ({sign} {target.goal:g}{target.unit}) "
                f"{verdict[target.met]}"
            )
        for note in self.notes:
            console.print(f"[dim]note: {note}[/]")

    def _chart(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server or in CI
        import matplotlib.pyplot as plt

        groups = list(dict.fromkeys(row["group"] for row in self.rows))
        systems = list(dict.fromkeys(row["system"] for row in self.rows))
        width = 0.8 / max(1, len(systems))
        fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 3), 4.5))
        for i, system in enumerate(systems):
            xs, ys = [], []
            for j, group in enumerate(groups):
                value = self.value(system, group)
                if value is not None:
                    xs.append(j + i * width)
                    ys.append(value)
            ax.bar(xs, ys, width, label=system)
        ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels([g or self.metric for g in groups])
        ax.set_ylabel(self.metric)
        ax.set_title(self.title + (" (smoke)" if self.smoke else ""))
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Machine, versions and date, recorded with every result."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        # Other work on the machine while it ran: numbers from a busy machine are lower.
        "load_average": list(os.getloadavg()),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in (
                "hfserve",
                "torch",
                "transformers",
                "sentence-transformers",
                "starlette",
                "uvicorn",
                "litserve",
            )
        },
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)
