"""The tensor sampling stage against transformers' own logits processors, on plain tensors."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hfserve.skills.generation.sampling import (
    LOGIT_BIAS_MAX,
    SamplingParams,
    SamplingTable,
    StepPlan,
    _below_min_p,
    _truncate,
    penalise,
    sample,
    uniform_noise,
    unpack_bitmask,
)

VOCAB = 64
CPU = torch.device("cpu")


def _table(rows: int = 8, eos: tuple[int, ...] = (3,)) -> SamplingTable:
    return SamplingTable(rows, VOCAB, CPU, eos)


def _logits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn((n, VOCAB), generator=torch.Generator().manual_seed(seed)) * 3


def _rows(
    table: SamplingTable, *params: SamplingParams, prompt: list[int] | None = None
) -> torch.Tensor:
    return torch.tensor([table.acquire(p, prompt or [1, 2]) for p in params], dtype=torch.int64)


def test_greedy_rows_take_the_argmax_and_top_k_1_equals_greedy() -> None:
    table = _table()
    logits = _logits(4)
    rows = _rows(
        table,
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.5, top_k=1, seed=5),
        SamplingParams(temperature=0.7, top_k=1, seed=6),
        SamplingParams(temperature=0.0, logprobs=0),
    )
    result = sample(logits, rows, table, table.plan())
    assert result.tokens.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.3), (5, 1.0), (7, 0.6), (200, 0.95)])
def test_truncation_matches_transformers_warpers(top_k: int, top_p: float) -> None:
    scores = _logits(6, seed=top_k)
    expected = scores.clone()
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)  # type: ignore[arg-type]
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)  # type: ignore[arg-type]
    dropped = _truncate(scores, torch.full((6,), top_k), torch.full((6,), top_p))
    assert torch.equal(dropped, expected.isinf())


def test_min_p_matches_transformers_warper() -> None:
    scores = _logits(5, seed=3)
    expected = MinPLogitsWarper(0.2)(None, scores.clone())  # type: ignore[arg-type]
    assert torch.equal(_below_min_p(scores, torch.full((5,), 0.2)), expected.isinf())


def test_repetition_penalty_matches_transformers_and_openai_penalties_add_up() -> None:
    table = _table()
    prompt = [4, 9, 9, 17]
    params = SamplingParams(repetition_penalty=1.7, temperature=0.0)
    rows = _rows(table, params, prompt=prompt)
    # Two generated tokens: 9 (also in the prompt) and 30.
    table.counts.index_put_(
        (rows.repeat(2), torch.tensor([9, 30])), torch.ones(2, dtype=torch.int32), accumulate=True
    )
    scores = _logits(1, seed=11)
    expected = RepetitionPenaltyLogitsProcessor(1.7)(
        torch.tensor([[*prompt, 9, 30]]), scores.clone()
    )
    got = penalise(scores, table.counts[rows], table.floats[rows])
    assert torch.allclose(got, expected)

    other = _rows(
        table, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt=prompt
    )
    table.counts.index_put_(
        (other.repeat(3), torch.tensor([30, 30, 31])),
        torch.ones(3, dtype=torch.int32),
        accumulate=True,
    )
    got = penalise(scores, table.counts[other], table.floats[other])
    delta = (scores - got)[0]
    assert delta[30].item() == pytest.approx(0.5 + 2 * 0.25)
    assert delta[31].item() == pytest.approx(0.5 + 0.25)
    assert delta[9].item() == 0.0  # a prompt token is not "generated"
    assert delta[[0, 1, 2]].tolist() == [0.0, 0.0, 0.0]


def test_penalties_change_counts_in_place_as_tokens_are_chosen() -> None:
    table = _table()
    rows = _rows(table, SamplingParams(temperature=0.0, frequency_penalty=2.0))
    logits = torch.zeros((1, VOCAB))
    logits[0, 10] = 3.0
    logits[0, 11] = 2.0
    plan = table.plan()
    first = sample(logits, rows, table, plan).tokens.item()
    second = sample(logits, rows, table, plan).tokens.item()
    third = sample(logits, rows, table, plan).tokens.item()
    # 10 (3.0) -> 10 again would be 1.0 < 11's 2.0 -> 11 -> then 10 (1.0) vs 11 (0.0).
    assert (first, second, third) == (10, 11, 10)


def test_logit_bias_min_tokens_and_grammar_mask() -> None:
    table = _table(eos=(3,))
    logits = _logits(3, seed=2)
    logits[:, 3] = 50.0  # EOS is by far the most likely
    rows = _rows(
        table,
        SamplingParams(temperature=0.0, logit_bias=((12, 100.0),)),
        SamplingParams(temperature=0.0, min_tokens=2),
        SamplingParams(temperature=0.0),
    )
    allowed = torch.ones((3, VOCAB), dtype=torch.bool)
    allowed[2] = False
    allowed[2, 40] = True
    plan = table.plan()
    assert plan.logit_bias and plan.min_tokens and not plan.sampled
    first = sample(logits, rows, table, plan, allowed).tokens.tolist()
    assert first[0] == 12 and first[1] != 3 and first[2] == 40
    sample(logits, rows, table, plan, allowed)
    # min_tokens=2 is met after two steps: EOS is allowed again.
    assert sample(logits, rows, table, plan, allowed).tokens.tolist()[1] == 3


def test_counter_noise_depends_only_on_seed_and_position() -> None:
    table = SamplingTable(400, VOCAB, CPU)
    a = _rows(table, SamplingParams(seed=42), SamplingParams(seed=7))
    b = _rows(table, SamplingParams(seed=1), SamplingParams(seed=42))
    noise_a = uniform_noise(table, a)
    noise_b = uniform_noise(table, b)
    assert noise_a[0] == noise_b[1]  # same seed, same position, other neighbours
    assert noise_a[0] != noise_a[1]
    table.ints[a[0], 4] += 1  # the next position draws fresh noise
    assert uniform_noise(table, a)[0] != noise_b[1]
    many = _rows(table, *(SamplingParams(seed=s * 2**40 + 3) for s in range(300)))
    spread = uniform_noise(table, many)
    assert spread.min().item() > 0.0 and spread.max().item() < 1.0
    assert spread.mean().item() == pytest.approx(0.5, abs=0.06)
    assert len(set(spread.tolist())) == 300


def test_sampled_tokens_follow_the_tempered_distribution() -> None:
    # One row sampled at many positions: the counts match softmax(logits / T).
    table = SamplingTable(1, 4, CPU)
    rows = _rows(table, SamplingParams(temperature=0.5, seed=123))
    logits = torch.tensor([[0.0, 0.5, 1.0, -1.0]])
    draws = 4000
    counts = torch.zeros(4)
    plan = table.plan()
    for _ in range(draws):
        counts[sample(logits, rows, table, plan).tokens.item()] += 1
    expected = TemperatureLogitsWarper(0.5)(None, logits.clone()).softmax(-1)[0]  # type: ignore[arg-type]
    assert torch.allclose(counts / draws, expected, atol=0.03)


def test_logprobs_are_the_raw_distribution() -> None:
    table = _table()
    logits = _logits(2, seed=9)
    rows = _rows(
        table,
        SamplingParams(temperature=0.0, logprobs=3, repetition_penalty=2.0),
        SamplingParams(temperature=1.0, logprobs=0, seed=1),
    )
    result = sample(logits, rows, table, table.plan())
    raw = logits.log_softmax(-1)
    assert result.logprobs is not None and result.top_ids is not None
    assert result.top_logprobs is not None
    assert torch.allclose(result.logprobs, raw.gather(1, result.tokens[:, None])[:, 0])
    assert result.top_ids.shape == (2, 3)
    assert torch.equal(result.top_ids, raw.topk(3).indices)
    only_chosen = sample(logits, rows, table, StepPlan(logprobs=0))
    assert only_chosen.top_ids is None and only_chosen.logprobs is not None
    assert sample(logits, rows, table, StepPlan()).logprobs is None


def test_full_plan_changes_nothing_for_plain_rows() -> None:
    # The static (graph) path runs every part: a plain greedy row still takes the argmax.
    table = _table()
    logits = _logits(3, seed=4)
    rows = _rows(table, SamplingParams(temperature=0.0), SamplingParams(temperature=0.0))
    rows = torch.cat([rows, torch.tensor([table.dummy])])
    allowed = torch.ones((3, VOCAB), dtype=torch.bool)
    tokens = sample(logits, rows, table, StepPlan.full(), allowed).tokens
    assert tokens.tolist()[:2] == logits.argmax(-1).tolist()[:2]


def test_table_rows_are_reused_and_bounded() -> None:
    table = _table(rows=2)
    first = table.acquire(SamplingParams(temperature=0.0, logprobs=5), [1])
    second = table.acquire(SamplingParams(top_p=0.5, min_p=0.1, presence_penalty=1.0), [1])
    plan = table.plan()
    assert plan.sampled and plan.truncated and plan.min_p and plan.penalties
    assert plan.logprobs == 5
    with pytest.raises(RuntimeError, match="no free"):
        table.acquire(SamplingParams(), [1])
    table.release(second)
    table.release(second)  # twice is harmless
    assert table.plan() == StepPlan(logprobs=5)
    assert table.acquire(SamplingParams(), [1]) == second
    table.release(first)
    assert table.plan().logprobs == -1
    assert table.memory_bytes() > 3 * VOCAB * 4
    assert LOGIT_BIAS_MAX == 300


def test_unpack_bitmask_masks_ids_past_the_mask() -> None:
    mask = torch.tensor([[0b101, -1]], dtype=torch.int32)
    allowed = unpack_bitmask(mask, 40)
    assert allowed[0, :3].tolist() == [True, False, True]
    assert allowed[0, 32:40].all()
    wider = unpack_bitmask(mask, 70)  # logits wider than the tokenizer's vocabulary
    assert wider.shape == (1, 70) and not wider[0, 64:].any()
    assert not math.isnan(float(allowed.sum()))
