"""The host side of the sampling stage: which table row each request has, grammars, results.

:mod:`.sampling` is the tensor math; this module is what runs around it on the thread that
drives the decoding steps (transformers' manager thread), in three calls per step:

- :meth:`SamplingStage.prepare` (before the step, while the batch is planned): gives each new
  request a table row, frees the rows of finished and cancelled requests, and fills the
  grammar bitmask of the rows that have an ``llguidance.LLMatcher``;
- :meth:`SamplingStage.run` (inside the step): the sampling stage over the step's logits;
- :meth:`SamplingStage.collect` (after the step, with the tokens on the host): reads the
  logprobs back and advances each grammar by its request's new token.

:func:`params_of` and :func:`check_sampling` turn a ``GenerationRequest`` into the stage's
parameters and refuse what it cannot honour (a 400 naming the API field).

Requests are registered and forgotten from the event loop; those calls only touch a dict and a
deque (atomic under the GIL), and the table itself is written on the stepping thread between
steps, so a row is never reused while a step still reads it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hfserve.errors import InvalidRequestError
from hfserve.skills.base import GenerationRequest
from hfserve.skills.generation.sampling import (
    LOGIT_BIAS_MAX,
    LOGPROBS_MAX,
    SamplingParams,
    SamplingTable,
    StepPlan,
    sample,
    unpack_bitmask,
)

if TYPE_CHECKING:
    import torch

__all__ = ["SamplingStage", "SlotStep", "StepLogprobs", "check_sampling", "params_of"]


@dataclass(frozen=True)
class StepLogprobs:
    """The chosen token's logprob and the most likely tokens as ``(id, logprob)``, best first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SlotStep:
    """What the stage adds to one request's output of a step."""

    logprobs: StepLogprobs | None = None
    grammar_done: bool = False
    grammar_error: str | None = None


@dataclass
class _Registered:
    params: SamplingParams
    prompt_ids: list[int]
    grammar: Any = None


@dataclass
class SamplingStage:
    """Per-request sampling around :func:`~hfserve.skills.generation.sampling.sample`.

    Args:
        rows: the most requests in flight at once (the engine's admission bound).
        vocab_size: the width of the model's logits.
        device: where the logits are.
        eos_ids: the ids ``min_tokens`` masks.
        static: run every part of the stage on every step (captured graphs / compile need one
            code path); otherwise parts that no live request uses are skipped.
    """

    rows: int
    vocab_size: int
    device: torch.device
    eos_ids: tuple[int, ...] = ()
    static: bool = False
    rows_after_cancel: int = 0
    sampled_rows: int = 0
    _registered: dict[int, _Registered] = field(default_factory=dict)
    _row_of: dict[int, int] = field(default_factory=dict)
    _released: deque[int] = field(default_factory=deque)
    _grammar_rows: int = 0
    _step_slots: list[int] = field(default_factory=list)
    _step_grammar: bool = False
    _executor: Any = None

    def __post_init__(self) -> None:
        import torch

        self.table = SamplingTable(self.rows, self.vocab_size, self.device, self.eos_ids)
        words = math.ceil(self.vocab_size / 32)
        self._bitmask_host = torch.full((self.rows + 1, words), -1, dtype=torch.int32)
        self._bitmask = torch.full(
            (self.rows + 1, words), -1, dtype=torch.int32, device=self.device
        )
        # The step's logprobs land here (chosen, top ids, top logprobs): a persistent buffer, so
        # a replayed accelerator graph writes where :meth:`collect` reads.
        self._logprobs = torch.zeros(
            (self.rows + 1, 1 + 2 * LOGPROBS_MAX), dtype=torch.float64, device=self.device
        )

    def memory_bytes(self) -> int:
        """Bytes of the stage's device tensors."""
        extra = self._bitmask.numel() * 4 + self._logprobs.numel() * 8
        return self.table.memory_bytes() + extra

    # -- event loop side -------------------------------------------------------------------

    def register(
        self, slot: int, params: SamplingParams, prompt_ids: list[int], grammar: Any = None
    ) -> None:
        """Remember a submitted request; its row is written when it first enters a step."""
        self._registered[slot] = _Registered(params, list(prompt_ids), grammar)

    def forget(self, slot: int) -> None:
        """The request is finished or cancelled; its row is freed before the next step."""
        self._released.append(slot)

    # -- stepping thread side --------------------------------------------------------------

    def _drain(self) -> None:
        while self._released:
            slot = self._released.popleft()
            entry = self._registered.pop(slot, None)
            row = self._row_of.pop(slot, None)
            if row is not None:
                self.table.release(row)
                if entry is not None and entry.grammar is not None:
                    self._grammar_rows -= 1

    def _row(self, slot: int) -> int:
        row = self._row_of.get(slot)
        if row is not None:
            return row
        entry = self._registered.get(slot)
        if entry is None:
            # Cancelled after this step was planned: it gets the no-op row, its token is dropped.
            self.rows_after_cancel += 1
            return self.table.dummy
        row = self.table.acquire(entry.params, entry.prompt_ids)
        self._row_of[slot] = row
        if entry.grammar is not None:
            self._grammar_rows += 1
        return row

    def prepare(self, slots: list[int]) -> torch.Tensor:
        """The table rows of a step's requests (in order), with their grammar masks filled.

        This host work is per request of the step, like transformers' own per-request
        processors: one dict lookup each, and an llguidance mask for requests with a grammar.
        """
        import torch

        self._drain()
        rows = [self._row(s) for s in slots]
        self.sampled_rows += sum(1 for r in rows if r != self.table.dummy)
        self._step_slots = list(slots)
        self._step_grammar = False
        if self._grammar_rows or self.static:
            self._fill_bitmask(slots)
        if self.device.type != "cpu":  # pragma: no cover - accelerators only
            # Rows and masks were written on the current stream; the step may run on another
            # (transformers' compute stream, or a graph replay), so let those writes land first.
            torch.accelerator.synchronize(self.device)
        return torch.tensor(rows, dtype=torch.int32)

    def _fill_bitmask(self, slots: list[int]) -> None:
        from llguidance import LLExecutor

        matchers = []
        for index, slot in enumerate(slots):
            entry = self._registered.get(slot)
            if entry is not None and entry.grammar is not None and slot in self._row_of:
                matchers.append((entry.grammar, index))
        host = self._bitmask_host[: max(len(slots), 1)]
        host.fill_(-1)
        if matchers:
            if self._executor is None:
                self._executor = LLExecutor()
            # The masks of all grammar rows in parallel native threads (the GIL is released).
            # This is ``llguidance.torch.fill_next_token_bitmask_par`` without importing that
            # module, whose import compiles a kernel with ``torch.compile`` (pulls in inductor).
            words = host.size(1)
            self._executor.unsafe_compute_mask_ptr(
                matchers, host.data_ptr(), words * 4, host.size(0)
            )
            self._step_grammar = True
        if matchers or self.static:
            # A blocking copy: the step reads this buffer right after, on whatever stream.
            self._bitmask[: host.size(0)].copy_(host)

    def plan(self) -> StepPlan:
        """The parts of the stage this step runs."""
        return StepPlan.full() if self.static else self.table.plan()

    def run(self, scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Choose each row's token; returns scores whose argmax is that token (device only)."""
        import torch

        n = scores.size(0)
        index = rows[:n].long()
        allowed = None
        if self._step_grammar or self.static:
            allowed = unpack_bitmask(self._bitmask[:n], scores.size(1))
        plan = self.plan()
        neutral = allowed is None and not (
            plan.sampled or plan.penalties or plan.logit_bias or plan.min_tokens
        )
        if neutral and plan.logprobs < 0:
            # Every row is plain greedy and nothing is reported: transformers' own argmax of the
            # logits is our choice, so the stage costs nothing (greedy at c=1 stays as fast).
            return scores
        result = sample(scores, index, self.table, plan, allowed)
        if result.logprobs is not None:
            parts = [result.logprobs[:, None]]
            if result.top_ids is not None and result.top_logprobs is not None:
                parts += [result.top_ids, result.top_logprobs]
            packed = torch.cat([p.to(torch.float64) for p in parts], dim=1)
            self._logprobs[:n, : packed.size(1)].copy_(packed)
        if neutral:
            return scores
        # transformers' step takes the argmax of what a logits processor returns: a row that is
        # 0 at the chosen token and -inf elsewhere hands it our choice unchanged.
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(1, result.tokens[:, None], 0.0)

    def collect(self, new_tokens: dict[int, int]) -> dict[int, SlotStep]:
        """After a step: logprobs and grammar progress per slot, for ``{slot: new token}``."""
        logprobs: dict[int, StepLogprobs] = {}
        # Read back only while a live request wants logprobs (the static plan always computes
        # them); the buffer's layout is that of the plan the step ran.
        if self.table.plan().logprobs >= 0 and new_tokens:
            logprobs = self._read_logprobs(self.plan().logprobs, new_tokens)
        steps: dict[int, SlotStep] = {}
        for slot, token in new_tokens.items():
            entry = self._registered.get(slot)
            grammar = entry.grammar if entry is not None else None
            done, error = False, None
            if grammar is not None:
                if not grammar.consume_token(token) or grammar.is_error():
                    error = grammar.get_error() or f"token {token} does not fit the grammar"
                elif grammar.is_stopped():
                    done = True
            wanted = entry is not None and entry.params.logprobs is not None
            lp = logprobs.get(slot) if wanted else None
            if lp is not None or done or error is not None:
                steps[slot] = SlotStep(lp, done, error)
        return steps

    def _read_logprobs(self, top: int, new_tokens: dict[int, int]) -> dict[int, StepLogprobs]:
        slots = self._step_slots
        k = min(top, self.vocab_size)
        # One device-to-host copy per step, and only while some request wants logprobs; the
        # step's tokens were already copied to the host by transformers, so it waits on nothing.
        packed = self._logprobs[: len(slots), : 1 + 2 * k].cpu().tolist()
        out: dict[int, StepLogprobs] = {}
        for index, slot in enumerate(slots):
            entry = self._registered.get(slot)
            if slot not in new_tokens or entry is None or entry.params.logprobs is None:
                continue
            row = packed[index]
            n = min(entry.params.logprobs, k)
            out[slot] = StepLogprobs(
                row[0], tuple((int(row[1 + i]), row[1 + k + i]) for i in range(n))
            )
        return out


def params_of(request: GenerationRequest, seed: int) -> SamplingParams:
    """The sampling stage's view of a request."""
    return SamplingParams(
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        logit_bias=tuple(sorted(request.logit_bias.items())),
        min_tokens=0 if request.ignore_eos else request.min_tokens,
        seed=seed,
        logprobs=request.logprobs,
    )


def check_sampling(request: GenerationRequest, vocab_size: int) -> None:
    """Refuse parameters the sampling stage cannot honour, naming the API field."""
    checks: list[tuple[bool, str, str]] = [
        (request.temperature >= 0, "temperature must be >= 0", "temperature"),
        (0 < request.top_p <= 1, "top_p must be in (0, 1]", "top_p"),
        (request.top_k >= 0, "top_k must be >= 0 (0 turns it off)", "top_k"),
        (0 <= request.min_p <= 1, "min_p must be in [0, 1]", "min_p"),
        (request.repetition_penalty > 0, "repetition_penalty must be > 0", "repetition_penalty"),
        (
            request.logprobs is None or 0 <= request.logprobs <= LOGPROBS_MAX,
            f"logprobs must be in [0, {LOGPROBS_MAX}]",
            "top_logprobs",
        ),
        (
            len(request.logit_bias) <= LOGIT_BIAS_MAX,
            f"logit_bias takes at most {LOGIT_BIAS_MAX} tokens",
            "logit_bias",
        ),
        (
            all(0 <= i < vocab_size for i in request.logit_bias),
            f"logit_bias token ids must be in [0, {vocab_size})",
            "logit_bias",
        ),
    ]
    for ok, message, param in checks:
        if not ok:
            raise InvalidRequestError(message, param=param)
    grammar = request.grammar
    if grammar is not None and grammar.is_error():
        raise InvalidRequestError(
            f"the grammar is invalid: {grammar.get_error()}", param="response_format"
        )
