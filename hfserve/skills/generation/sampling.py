"""The sampling stage: one pass over a decoding step's logits, each row with its own parameters.

Every request's parameters live in rows of a :class:`SamplingTable` (device tensors), and
:func:`sample` works on the step's whole ``[rows, vocab]`` logits tensor at once: no Python loop
over rows, no host synchronisation, no data-dependent shapes, so the stage can sit inside a
captured accelerator graph or a compiled step. The order of operations:

1. repetition penalty (transformers' ``RepetitionPenaltyLogitsProcessor`` semantics: every token
   seen in the prompt or the generation has its logit divided by the penalty when positive and
   multiplied when negative), then OpenAI's presence and frequency penalties over the *generated*
   tokens (vLLM's semantics);
2. ``logit_bias`` (sparse: up to :data:`LOGIT_BIAS_MAX` ids per row, added to the logits);
3. ``min_tokens``: the EOS ids are masked until the row has produced that many tokens;
4. the grammar bitmask (from llguidance; rows without a grammar have every bit set);
5. greedy rows (``temperature == 0``) take the argmax here - with no penalties or bias that is
   exactly ``model.generate(do_sample=False)``;
6. sampled rows: temperature, then top-k, top-p and min-p (transformers' warper order and
   rules), then inverse-CDF sampling with counter-based noise: one uniform ``u`` per row, a hash
   of (seed, position), picks the first token whose cumulative probability reaches ``u``. So a
   seed gives the same tokens whatever else shares the batch, with no per-row
   ``torch.Generator``; one number per row is hashed, not one per vocabulary entry (Gumbel-max
   would need ``rows x vocab`` hashes and two logarithms each).

Logprobs are those of the distribution the model produced: ``log_softmax`` of the raw logits,
before penalties, bias, grammar and temperature (vLLM's default, "raw" logprobs). So with greedy
decoding and no penalties the chosen token is the top entry.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "LOGIT_BIAS_MAX",
    "LOGPROBS_MAX",
    "SampleResult",
    "SamplingParams",
    "SamplingTable",
    "StepPlan",
    "sample",
]

LOGPROBS_MAX = 20
LOGIT_BIAS_MAX = 300
# The counts table keeps generated-token counts in the low bits and marks prompt tokens with this
# bit, so one int32 tensor serves both the repetition penalty (prompt + generated) and the
# presence/frequency penalties (generated only).
_PROMPT_BIT = 1 << 30
_COUNT_MASK = _PROMPT_BIT - 1
_M32 = 0xFFFFFFFF

# Columns of the packed parameter tables (one host-to-device copy per new request).
_TEMPERATURE, _TOP_P, _MIN_P, _PRESENCE, _FREQUENCY, _REPETITION = range(6)
_TOP_K, _MIN_TOKENS, _SEED_LO, _SEED_HI, _PRODUCED = range(5)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling parameters (``temperature == 0`` means greedy)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    seed: int = 0
    logprobs: int | None = None

    @property
    def penalised(self) -> bool:
        """Whether any penalty changes the logits."""
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    @property
    def truncated(self) -> bool:
        """Whether top-k or top-p cut the distribution (they need a sort)."""
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0)


@dataclass(frozen=True)
class StepPlan:
    """Which parts of the stage a step needs; a part no live row uses is skipped (CPU speed).

    ``StepPlan.full()`` runs every part, for captured graphs whose code must not change.
    """

    sampled: bool = False
    truncated: bool = False
    min_p: bool = False
    penalties: bool = False
    logit_bias: bool = False
    min_tokens: bool = False
    logprobs: int = -1

    @classmethod
    def full(cls) -> StepPlan:
        """Every part on, with the largest number of top logprobs."""
        return cls(True, True, True, True, True, True, LOGPROBS_MAX)


@dataclass(frozen=True)
class SampleResult:
    """Per row: the chosen token, its logprob, and the ``k`` most likely tokens with theirs."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


@dataclass
class SamplingTable:
    """Per-request sampling parameters and progress as device tensors, one row per request.

    Row ``rows`` (the last) is a no-op greedy row: padding and cancelled rows of a step point at
    it. Rows are handed out by :meth:`acquire` and returned by :meth:`release`, on the thread that
    runs the steps, so a row is never rewritten while a step reads it.
    """

    rows: int
    vocab_size: int
    device: torch.device
    eos_ids: tuple[int, ...] = ()
    _free: list[int] = field(init=False)
    _live: dict[int, SamplingParams] = field(init=False, default_factory=dict)
    _features: Counter[str] = field(init=False, default_factory=Counter)

    def __post_init__(self) -> None:
        import torch

        n, v, dev = self.rows + 1, self.vocab_size, self.device
        self.floats = torch.zeros((n, 6), dtype=torch.float32, device=dev)
        self.floats[:, _TOP_P] = 1.0
        self.floats[:, _REPETITION] = 1.0
        self.ints = torch.zeros((n, 5), dtype=torch.int64, device=dev)
        self.counts = torch.zeros((n, v), dtype=torch.int32, device=dev)
        self.bias_ids = torch.zeros((n, LOGIT_BIAS_MAX), dtype=torch.int64, device=dev)
        self.bias_values = torch.zeros((n, LOGIT_BIAS_MAX), dtype=torch.float32, device=dev)
        self.eos_mask = torch.zeros(v, dtype=torch.bool, device=dev)
        self.eos_mask[[i for i in self.eos_ids if 0 <= i < v]] = True
        self._free = list(range(self.rows - 1, -1, -1))

    @property
    def dummy(self) -> int:
        """The no-op row that padding and cancelled rows point at."""
        return self.rows

    def memory_bytes(self) -> int:
        """Bytes of the table's tensors."""
        tensors = (self.floats, self.ints, self.counts, self.bias_ids, self.bias_values)
        return sum(t.numel() * t.element_size() for t in tensors)

    def acquire(self, params: SamplingParams, prompt_ids: list[int]) -> int:
        """Write a request's parameters into a free row and return it.

        Raises:
            RuntimeError: every row is taken (the engine admits no more requests than rows).
        """
        import torch

        if not self._free:
            raise RuntimeError("no free sampling rows")
        row = self._free.pop()
        dev = self.device
        self.floats[row] = torch.tensor(
            [
                params.temperature,
                params.top_p,
                params.min_p,
                params.presence_penalty,
                params.frequency_penalty,
                params.repetition_penalty,
            ],
            dtype=torch.float32,
        ).to(dev)
        seed = params.seed & ((1 << 64) - 1)
        self.ints[row] = torch.tensor(
            [params.top_k, params.min_tokens, seed & _M32, (seed >> 32) & _M32, 0],
            dtype=torch.int64,
        ).to(dev)
        if params.penalised:
            self.counts[row].zero_()
            ids = torch.tensor(sorted(set(prompt_ids)), dtype=torch.int64).to(dev)
            self.counts[row].index_fill_(0, ids, _PROMPT_BIT)
        ids_list = [i for i, _ in params.logit_bias]
        values = [b for _, b in params.logit_bias]
        pad = LOGIT_BIAS_MAX - len(ids_list)
        self.bias_ids[row] = torch.tensor(ids_list + [0] * pad, dtype=torch.int64).to(dev)
        self.bias_values[row] = torch.tensor(values + [0.0] * pad, dtype=torch.float32).to(dev)
        self._live[row] = params
        self._features.update(_features(params))
        return row

    def release(self, row: int) -> None:
        """Return a row to the free list."""
        params = self._live.pop(row, None)
        if params is None:
            return
        self._features.subtract(_features(params))
        self._free.append(row)

    def plan(self) -> StepPlan:
        """The parts of the stage that the live rows need (at worst a superset for one step)."""
        f = self._features
        logprobs = max(
            (p.logprobs for p in self._live.values() if p.logprobs is not None), default=-1
        )
        return StepPlan(
            sampled=f["sampled"] > 0,
            truncated=f["truncated"] > 0,
            min_p=f["min_p"] > 0,
            penalties=f["penalties"] > 0,
            logit_bias=f["logit_bias"] > 0,
            min_tokens=f["min_tokens"] > 0,
            logprobs=logprobs,
        )


def _features(params: SamplingParams) -> list[str]:
    flags = {
        "sampled": params.temperature > 0,
        "truncated": params.truncated,
        "min_p": params.temperature > 0 and params.min_p > 0,
        "penalties": params.penalised,
        "logit_bias": bool(params.logit_bias),
        "min_tokens": params.min_tokens > 0,
    }
    return [name for name, on in flags.items() if on]


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding values < 2**32.

    Written with torch ops so it runs batched on any device; int64 products wrap and the mask
    keeps the low 32 bits, which is all the hash needs.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def uniform_noise(table: SamplingTable, rows: torch.Tensor) -> torch.Tensor:
    """One uniform (0, 1) number per row, a pure function of the row's (seed, position)."""
    ints = table.ints[rows]
    key = _mix32(ints[:, _SEED_HI] ^ _mix32(ints[:, _PRODUCED] & _M32))
    bits = _mix32(ints[:, _SEED_LO] ^ key)
    # 24 bits fill a float32 mantissa; the half step keeps u strictly inside (0, 1).
    return ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))


def _inverse_cdf(scaled: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative probability first reaches ``u`` (per row)."""
    import torch

    cdf = scaled.softmax(dim=-1).cumsum(dim=-1)
    # Scaled by the row's total so float rounding in the cumsum cannot leave u past the end;
    # a token of probability 0 never starts a cdf step, so it is never picked.
    target = (u * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp(max=scaled.size(1) - 1)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """llguidance's int32 bitmask ``[rows, ceil(V/32)]`` as a bool ``[rows, V]`` allowed-mask.

    Written here rather than calling ``llguidance.torch.apply_token_bitmask_inplace``: that one is
    ``torch.compile``'d at first use (a C++ toolchain and seconds of compiling on CPU).
    """
    import torch

    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    # Ids past the mask's width (logits wider than the tokenizer's vocabulary) stay disallowed.
    allowed = bits.reshape(bitmask.size(0), -1).bool()
    if allowed.size(1) >= vocab_size:
        return allowed[:, :vocab_size]
    pad = torch.zeros(
        (bitmask.size(0), vocab_size - allowed.size(1)), dtype=torch.bool, device=bitmask.device
    )
    return torch.cat([allowed, pad], dim=1)


def penalise(logits: torch.Tensor, counts: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
    """Repetition (prompt + generated), then frequency and presence (generated) penalties."""
    import torch

    generated = (counts & _COUNT_MASK).float()
    repetition = floats[:, _REPETITION, None]
    x = torch.where(
        counts != 0, torch.where(logits > 0, logits / repetition, logits * repetition), logits
    )
    x = x - floats[:, _FREQUENCY, None] * generated
    return x - floats[:, _PRESENCE, None] * (generated > 0).float()


def _below_min_p(scaled: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Tokens less likely than ``min_p`` times the top token (MinPLogitsWarper's rule)."""
    probs = scaled.softmax(dim=-1)
    return probs < min_p[:, None] * probs.max(dim=-1, keepdim=True).values


def _truncate(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """top-k then top-p (transformers' warpers' rules) as one mask of the tokens to drop."""
    import torch

    vocab = scaled.size(1)
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=scaled.device)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    sorted_logits = sorted_logits.masked_fill(ranks[None, :] >= k[:, None], -math.inf)
    probs = sorted_logits.softmax(dim=-1)
    # Keep a token while the mass strictly before it is below top_p (TopPLogitsWarper's rule
    # "drop the ascending tail whose cumulative mass is <= 1 - top_p", seen from the top).
    before = probs.cumsum(dim=-1) - probs
    keep = (before < top_p[:, None]) & (ranks[None, :] < k[:, None])
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter(1, order, keep).logical_not()


def sample(
    logits: torch.Tensor,
    rows: torch.Tensor,
    table: SamplingTable,
    plan: StepPlan,
    allowed: torch.Tensor | None = None,
) -> SampleResult:
    """Choose one token per row of ``logits`` with each row's own parameters.

    Args:
        logits: ``[n, vocab]`` raw logits of the step.
        rows: ``[n]`` int64 table rows of the step's requests.
        table: the parameters and progress of every request; progress is advanced in place.
        plan: the parts of the stage to run (see :class:`StepPlan`).
        allowed: ``[n, vocab]`` bool grammar mask, or None when no row has a grammar.
    """
    import torch

    raw = logits.float()
    x = raw
    floats = table.floats[rows]
    ints = table.ints[rows]
    if plan.penalties:
        x = penalise(x, table.counts[rows], floats)
    if plan.logit_bias:
        x = x.scatter_add(1, table.bias_ids[rows], table.bias_values[rows])
    if plan.min_tokens:
        early = (ints[:, _PRODUCED] < ints[:, _MIN_TOKENS])[:, None] & table.eos_mask[None, :]
        x = x.masked_fill(early, -math.inf)
    if allowed is not None:
        x = x.masked_fill(~allowed, -math.inf)
    tokens = x.argmax(dim=-1)
    if plan.sampled:
        temperature = floats[:, _TEMPERATURE]
        is_sampled = temperature > 0
        scaled = x / torch.where(is_sampled, temperature, 1.0)[:, None]
        if plan.truncated:
            scaled = scaled.masked_fill(
                _truncate(scaled, ints[:, _TOP_K], floats[:, _TOP_P]), -math.inf
            )
        if plan.min_p:
            scaled = scaled.masked_fill(_below_min_p(scaled, floats[:, _MIN_P]), -math.inf)
        drawn = _inverse_cdf(scaled, uniform_noise(table, rows))
        tokens = torch.where(is_sampled, drawn, tokens)
    # Progress, in place on the device: the step counter keys the noise and min_tokens.
    table.ints[:, _PRODUCED].index_add_(0, rows, torch.ones_like(rows))
    if plan.penalties:
        table.counts.index_put_(
            (rows, tokens), torch.ones_like(tokens, dtype=torch.int32), accumulate=True
        )
    if plan.logprobs < 0:
        return SampleResult(tokens)
    logprobs = raw.log_softmax(dim=-1)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    if plan.logprobs == 0:
        return SampleResult(tokens, chosen)
    top = logprobs.topk(min(plan.logprobs, logprobs.size(1)), dim=-1)
    return SampleResult(tokens, chosen, top.indices, top.values)
