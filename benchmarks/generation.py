"""Generation throughput: hfserve vs ``transformers serve --continuous-batching`` vs offline.

A Llama-shaped model of ~30M parameters with random weights (realistic compute, meaningless
words) is built into a temporary folder. Every request is a 32-word chat prompt and
generates exactly 64 tokens (EOS ignored), streamed, closed loop at concurrency 1, 4 and 16,
driven by ``hfserve bench``:

* hfserve: ``hfserve serve --model llama=PATH`` (transformers' continuous batching inside,
  up to 16 sequences decoded together), requests with ``ignore_eos``, greedy
  (``temperature: 0``, as transformers serve's ``do_sample: false``);
* hfserve sampled: the same server, ``temperature: 1, top_p: 0.9, top_k: 50`` with a seed, so
  the sampling stage's cost shows against the greedy row;
* transformers serve: ``transformers serve PATH --continuous-batching``, requests naming the
  model by its path and forcing the length with its ``generation_config`` field;
* offline ``model.generate_batch`` over the same prompts: the ceiling (no HTTP, no server).

Targets at c=16: hfserve >= 6x its own c=1 throughput and >= 1.2x transformers serve;
sampled >= 0.9x greedy; TTFT p50 reported.

    python benchmarks/generation.py [--smoke]
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    LOOPBACK,
    Report,
    ServerProcess,
    Target,
    bench,
    free_port,
    hfserve_serve,
    parse_args,
    temp_dir,
)
from _llama import FULL, SMOKE, build_llama

from hfserve.bench import Endpoint
from hfserve.bench.workload import build_prompt

HFSERVE, PEER, OFFLINE = "hfserve", "transformers serve", "offline generate_batch (ceiling)"
SAMPLED = "hfserve sampled"
SAMPLING = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 7}
PROMPT_WORDS = 32
METRIC = "output tok/s"


@dataclass(frozen=True, slots=True)
class _Server:
    """One server under test: how ``hfserve bench`` must address it."""

    system: str
    url: str
    model: str
    extra_body: dict[str, Any]


def _drive(
    report: Report, servers: Sequence[_Server], levels: Sequence[int], tokens: int, rounds: int
) -> None:
    # Level by level, the servers back to back: load from elsewhere on the machine then
    # drifts over both alike instead of landing on whichever ran second.
    for concurrency in levels:
        for server in servers:
            data = bench(
                server.url,
                model=server.model,
                endpoint=Endpoint.CHAT,
                concurrency=concurrency,
                requests=concurrency * rounds,
                warmup=concurrency,
                prompt_tokens=PROMPT_WORDS,
                max_tokens=tokens,
                extra_body=server.extra_body,
            )
            if data["total_output_tokens"] != data["completed"] * tokens:
                raise RuntimeError(f"{server.system}: outputs are not {tokens} tokens: {data}")
            report.add(
                server.system,
                data["output_throughput"],
                group=f"c={concurrency}",
                req_s=data["request_throughput"],
                ttft_p50_ms=data["median_ttft_ms"],
                ttft_p99_ms=data["p99_ttft_ms"],
                tpot_p50_ms=data["median_tpot_ms"],
            )


def _offline(path: Path, count: int, tokens: int) -> float:
    """Output tokens/s of ``generate_batch`` over ``count`` of the benchmark's chat prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # type: ignore[no-untyped-call]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": build_prompt(0, i, PROMPT_WORDS)}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for i in range(count)
    ]
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=tokens,
        do_sample=False,
        eos_token_id=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.inference_mode():
        # A fresh manager sizes and allocates its paged cache and warms up on every call
        # (seconds, whatever the workload): build it once, sized for these prompts, and time
        # only the second call, which reuses it.
        model.generate_batch(inputs=prompts, generation_config=config, persistent_manager=True)
        started = time.perf_counter()
        outputs = model.generate_batch(
            inputs=prompts, generation_config=config, persistent_manager=True
        )
        elapsed = time.perf_counter() - started
        model.destroy_cached_continuous_batching_manager()
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    return generated / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``generation.json`` / ``generation.png``."""
    args = parse_args(__doc__ or "", argv)
    levels = (1, 2) if args.smoke else (1, 4, 16)
    tokens, rounds = (4, 1) if args.smoke else (64, 3)
    report = Report("generation", "Generation: ~30M Llama, 64 tokens/request", METRIC, args.smoke)
    with temp_dir("hfserve-generation-") as tmp:
        path = tmp / "llama"
        params = build_llama(path, SMOKE if args.smoke else FULL)
        port, peer_port = free_port(), free_port()
        env = {"HFSERVE_MAX_CONCURRENT_GENERATIONS": str(max(levels))}
        peer = ServerProcess(
            "transformers-serve",
            [
                "transformers",
                "serve",
                str(path),
                "--host",
                LOOPBACK,
                "--port",
                str(peer_port),
                "--continuous-batching",
            ],
            ready_url=f"http://{LOOPBACK}:{peer_port}/health",
        )
        generation_config = {"max_new_tokens": tokens, "do_sample": False, "eos_token_id": -1}
        servers = [
            _Server(
                HFSERVE,
                f"http://{LOOPBACK}:{port}",
                "llama",
                {"ignore_eos": True, "temperature": 0},
            ),
            _Server(SAMPLED, f"http://{LOOPBACK}:{port}", "llama", {"ignore_eos": True} | SAMPLING),
            _Server(
                PEER,
                f"http://{LOOPBACK}:{peer_port}",
                str(path),
                {"generation_config": json.dumps(generation_config)},
            ),
        ]
        ours = hfserve_serve({"llama": path}, port, "--no-auth", "--no-response-cache", env=env)
        with ours, peer:
            _drive(report, servers, levels, tokens, rounds)
        ceiling = _offline(path, max(levels) * rounds, tokens)
    for concurrency in levels:
        report.add(OFFLINE, ceiling, group=f"c={concurrency}")
    report.add_ratios(PEER)
    top = f"c={levels[-1]}"
    ours_top, ours_one = report.measured(HFSERVE, top), report.measured(HFSERVE, "c=1")
    peer_top = report.measured(PEER, top)
    report.targets.append(Target(f"hfserve {top} >= 6x hfserve c=1", ours_top / ours_one, 6.0))
    report.targets.append(
        Target(f"hfserve >= 1.2x transformers serve at {top}", ours_top / peer_top, 1.2)
    )
    sampled_top = report.measured(SAMPLED, top)
    report.targets.append(
        Target(f"hfserve sampled >= 0.9x greedy at {top}", sampled_top / ours_top, 0.9)
    )
    ttft = next(
        r["ttft_p50_ms"] for r in report.rows if r["system"] == HFSERVE and r["group"] == top
    )
    report.notes.append(f"hfserve TTFT p50 at {top}: {ttft:,.1f} ms (reported, no target)")
    report.notes.append(
        f"model: {params / 1e6:.1f}M parameters, float32, CPU; {PROMPT_WORDS}-word chat prompts; "
        f"{rounds} requests per worker per level; the load generator shares the machine"
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
