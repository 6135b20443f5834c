"""The sampling stage in the engine: penalties, logit bias, logprobs, grammars and seeds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import llguidance
import llguidance.hf
import pytest
import torch
from transformers import AutoTokenizer

from hfserve.errors import InferenceError, InvalidRequestError
from hfserve.skills.base import GenerationRequest, RuntimeOptions
from hfserve.skills.generation.engine import logits_width
from hfserve.skills.generation.sampling import SamplingParams
from hfserve.skills.generation.stage import SamplingStage, SlotStep
from hfserve.skills.text_generation import TextGenerationSkill
from tests.fixtures.tiny_models import TinyModels
from tests.skills.test_generation_engine import _collect, _engine, _load, _prompt

pytestmark = pytest.mark.slow
HANG_GUARD = 60
SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}


class _FakeMatcher:
    """Stands in for an ``llguidance.LLMatcher`` where only ``collect`` looks at it."""

    def __init__(self, *, accept: bool = True, stopped: bool = False) -> None:
        self.accept, self.stopped = accept, stopped
        self.consumed: list[int] = []

    def consume_token(self, token: int) -> bool:
        self.consumed.append(token)
        return self.accept

    def is_error(self) -> bool:
        return not self.accept

    def get_error(self) -> str:
        return "" if self.accept else "boom"

    def is_stopped(self) -> bool:
        return self.stopped


def test_stage_collect_reports_grammar_progress_and_logprobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stage = SamplingStage(rows=4, vocab_size=16, device=torch.device("cpu"), eos_ids=(1,))
    done, broken, plain = _FakeMatcher(stopped=True), _FakeMatcher(accept=False), None
    stage.register(0, SamplingParams(temperature=0.0, logprobs=2), [5], done)
    stage.register(1, SamplingParams(temperature=0.0), [5], broken)
    stage.register(2, SamplingParams(temperature=0.0), [5], plain)
    # The grammar rows' masks come from llguidance, which needs real matchers: skip it here.
    monkeypatch.setattr(stage, "_fill_bitmask", lambda slots: None)
    rows = stage.prepare([0, 1, 2, 9])  # 9 was never registered: cancelled before its step
    assert rows.tolist()[3] == stage.table.dummy and stage.rows_after_cancel == 1
    logits = torch.randn(4, 16)
    out = stage.run(logits, rows)
    assert out.argmax(-1).tolist()[:3] == logits.argmax(-1).tolist()[:3]
    steps = stage.collect({0: 7, 1: 8, 2: 9})
    assert done.consumed == [7] and broken.consumed == [8]
    assert steps[0].grammar_done and steps[0].logprobs is not None
    assert len(steps[0].logprobs.top) == 2
    assert steps[1] == SlotStep(None, False, "boom")
    assert 2 not in steps
    monkeypatch.undo()
    # Grammar rows are live but none is in this step: every row of the mask stays allowed.
    stage.prepare([2])
    assert not stage._step_grammar
    stage.forget(0)
    stage.forget(1)
    stage.forget(9)  # never got a row
    stage.prepare([2])
    assert stage.table.plan().logprobs == -1
    stage.forget(2)
    stage.prepare([])
    assert stage.table.plan() == type(stage.table.plan())()
    assert stage.memory_bytes() > 0


def test_static_stage_fills_an_all_allowed_mask_on_every_step() -> None:
    stage = SamplingStage(rows=2, vocab_size=40, device=torch.device("cpu"), static=True)
    stage.register(0, SamplingParams(temperature=0.0), [1])
    rows = stage.prepare([0])
    logits = torch.randn(2, 40)  # a padded step: one real row, one padding row
    padded = torch.cat([rows, torch.tensor([stage.table.dummy], dtype=torch.int32)])
    out = stage.run(logits, padded)
    assert out[0].argmax().item() == logits[0].argmax().item()
    assert stage.collect({0: int(out[0].argmax())}) == {}  # nothing to report


def _matcher(path: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = _load(path)
    ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=logits_width(model), eos_token=[2])
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        SCHEMA, defaults={"whitespace_flexible": False}
    )
    return llguidance.LLMatcher(ll, grammar)


async def test_greedy_repetition_penalty_equals_model_generate(tiny_models: TinyModels) -> None:
    path = tiny_models.gpt2  # it repeats itself without a penalty
    prompt = _prompt(path)
    model = _load(path)
    reference = model.generate(
        torch.tensor([prompt]),
        do_sample=False,
        repetition_penalty=1.5,
        max_new_tokens=12,
        min_new_tokens=12,
    )[0, len(prompt) :].tolist()
    engine = await _engine(path)
    try:
        penalised = GenerationRequest(
            prompt_ids=prompt,
            max_new_tokens=12,
            temperature=0.0,
            repetition_penalty=1.5,
            ignore_eos=True,
        )
        plain = GenerationRequest(
            prompt_ids=prompt, max_new_tokens=12, temperature=0.0, ignore_eos=True
        )
        openai_style = GenerationRequest(
            prompt_ids=prompt,
            max_new_tokens=12,
            temperature=0.0,
            presence_penalty=1.0,
            frequency_penalty=1.0,
            ignore_eos=True,
        )
        (tokens, _), (plain_tokens, _), (openai_tokens, _) = await asyncio.gather(
            _collect(engine.submit(penalised)),
            _collect(engine.submit(plain)),
            _collect(engine.submit(openai_style)),
        )
    finally:
        await engine.aclose()
    assert tokens == reference
    # The penalties changed the output: fewer repeated tokens than without them.
    assert len(set(tokens)) > len(set(plain_tokens))
    assert len(set(openai_tokens)) > len(set(plain_tokens))


async def test_seeded_rows_are_independent_of_their_batch(tiny_models: TinyModels) -> None:
    path = tiny_models.llama
    prompt = _prompt(path)
    other = _prompt(path, "the quick brown fox")

    def requests() -> list[GenerationRequest]:
        common: dict[str, Any] = {"prompt_ids": prompt, "max_new_tokens": 14, "ignore_eos": True}
        return [
            GenerationRequest(**common, seed=11, presence_penalty=1.5, frequency_penalty=0.5),
            GenerationRequest(**common, seed=12, repetition_penalty=1.3, top_k=20, min_p=0.05),
            GenerationRequest(**common, seed=13, top_p=0.8, logit_bias={40: 3.0}),
            GenerationRequest(
                **common | {"max_new_tokens": 40},
                seed=14,
                temperature=1.3,
                grammar=_matcher(path),
            ),
        ]

    engine = await _engine(path)
    try:
        alone = [await _collect(engine.submit(r)) for r in requests()]
        noisy = [
            GenerationRequest(prompt_ids=other, max_new_tokens=n, temperature=t, seed=n)
            for n, t in ((5, 0.0), (9, 1.0), (20, 0.7))
        ]
        together = await asyncio.gather(
            *(_collect(engine.submit(r)) for r in [*noisy[:2], *requests(), noisy[2]])
        )
    finally:
        await engine.aclose()
    assert list(together[2:6]) == alone
    assert len({tuple(tokens) for tokens, _ in alone}) == 4
    text = AutoTokenizer.from_pretrained(path).decode(alone[3][0])
    assert json.loads(text)["color"] in {"red", "green", "blue"}
    assert alone[3][1] == "stop"


async def test_grammar_output_parses_and_ends_with_stop(tiny_models: TinyModels) -> None:
    generator = TextGenerationSkill().load(str(tiny_models.llama), "cpu", "auto", RuntimeOptions())
    await generator.start()
    try:
        ll = await asyncio.to_thread(generator.ll_tokenizer)
        assert generator.ll_tokenizer() is ll  # built once
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            SCHEMA, defaults={"whitespace_flexible": False}
        )
        prompt = generator.encode("hello world")
        for seed in range(4):
            request = GenerationRequest(
                prompt_ids=prompt,
                max_new_tokens=60,
                temperature=1.5,
                seed=seed,
                grammar=llguidance.LLMatcher(ll, grammar),
                logprobs=1,
            )
            chunks = [c async for c in generator.generate(request)]
            text = "".join(c.text for c in chunks)
            parsed = json.loads(text)
            assert parsed["color"] in {"red", "green", "blue"} and isinstance(parsed["ok"], bool)
            assert chunks[-1].finish_reason == "stop"
            logprobs = [lp for c in chunks for lp in (c.logprobs or [])]
            assert len(logprobs) == chunks[-1].completion_tokens
        broken = llguidance.LLMatcher(ll, "this is not a grammar {")
        with pytest.raises(InvalidRequestError) as info:
            generator.engine.submit(
                GenerationRequest(prompt_ids=prompt, max_new_tokens=5, grammar=broken)
            )
        assert info.value.param == "response_format"
    finally:
        await generator.aclose()


async def test_a_tokenizer_llguidance_cannot_use_is_a_400(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = TextGenerationSkill().load(str(tiny_models.gpt2), "cpu", "auto", RuntimeOptions())

    def slow_only(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("Only fast tokenizers are supported")

    monkeypatch.setattr(llguidance.hf, "from_tokenizer", slow_only)
    with pytest.raises(InvalidRequestError, match="constrained decoding") as info:
        generator.ll_tokenizer()
    assert info.value.param == "response_format"
    assert generator.vocab_size == logits_width(generator._model)


async def test_a_grammar_failure_mid_generation_fails_that_request(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tiny_models.llama
    prompt = _prompt(path)
    engine = await _engine(path)
    assert engine._stage is not None

    def failing(new_tokens: dict[int, int]) -> dict[int, SlotStep]:
        return {slot: SlotStep(grammar_error="no way on") for slot in new_tokens}

    try:
        monkeypatch.setattr(engine._stage, "collect", failing)
        with pytest.raises(InferenceError, match="no way on"):
            await _collect(engine.submit(GenerationRequest(prompt_ids=prompt, max_new_tokens=8)))
        assert engine.active == 0
    finally:
        await engine.aclose()


async def test_logprobs_are_the_models_and_greedy_takes_the_top(tiny_models: TinyModels) -> None:
    path = tiny_models.llama
    prompt = _prompt(path)
    engine = await _engine(path)
    try:
        stream = engine.submit(
            GenerationRequest(
                prompt_ids=prompt, max_new_tokens=6, temperature=0.0, ignore_eos=True, logprobs=3
            )
        )
        events = []
        async with asyncio.timeout(HANG_GUARD):
            events = [e async for e in stream]
    finally:
        await engine.aclose()
    tokens = [t for e in events for t in e.token_ids]
    logprobs = [lp for e in events for lp in (e.logprobs or [])]
    assert len(logprobs) == len(tokens) == 6
    model = _load(path)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].log_softmax(-1)
    for i, (token, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        assert lp.top[0][0] == token
        assert len(lp.top) == 3
        assert lp.logprob <= 0
        assert lp.logprob == pytest.approx(logits[len(prompt) - 1 + i, token].item(), abs=1e-4)


async def test_logit_bias_forces_and_bans_tokens(tiny_models: TinyModels) -> None:
    path = tiny_models.gpt2
    prompt = _prompt(path)
    engine = await _engine(path)
    try:
        forced, _ = await _collect(
            engine.submit(
                GenerationRequest(
                    prompt_ids=prompt,
                    max_new_tokens=5,
                    temperature=1.0,
                    seed=3,
                    logit_bias={77: 100.0},
                    ignore_eos=True,
                )
            )
        )
        plain, _ = await _collect(
            engine.submit(
                GenerationRequest(
                    prompt_ids=prompt, max_new_tokens=5, temperature=0.0, ignore_eos=True
                )
            )
        )
        banned, _ = await _collect(
            engine.submit(
                GenerationRequest(
                    prompt_ids=prompt,
                    max_new_tokens=5,
                    temperature=0.0,
                    ignore_eos=True,
                    logit_bias=dict.fromkeys(plain, -100.0),
                )
            )
        )
    finally:
        await engine.aclose()
    assert forced == [77] * 5
    assert not set(banned) & set(plain)
