"""The batch-1 path of the generation engine: a request alone decodes outside the scheduler.

Which path ran a step is observable from the cache the model's forward was given: the solo path
passes a ``DynamicCache``, continuous batching its ``PagedAttentionCache``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from hfserve.errors import InferenceError, ShuttingDownError
from hfserve.runtime.loader import runtime_options_from
from hfserve.settings import Settings
from hfserve.skills.base import GenerationRequest, RuntimeOptions
from hfserve.skills.generation.engine import GenerationEngine, TokenEvent
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow

HANG_GUARD = 60
PROMPT = "hello world, this is a tiny corpus"


class _Counted:
    """The model's forward, counting solo steps and continuous-batching steps."""

    def __init__(self, model: Any) -> None:
        self.solo = 0
        self.batched = 0
        self.fail_solo: BaseException | None = None
        self._forward = model.forward
        model.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(cache, DynamicCache):
            self.solo += 1
            if self.fail_solo is not None:
                raise self.fail_solo
        else:
            self.batched += 1
        return self._forward(*args, **kwargs)


def _load(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _prompt(path: Path, text: str = PROMPT) -> list[int]:
    return list(AutoTokenizer.from_pretrained(path).encode(text))


def _reference(model: Any, prompt: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n
    )
    return [int(t) for t in out[0, len(prompt) :]]


def _greedy(prompt: list[int], n: int) -> GenerationRequest:
    return GenerationRequest(prompt_ids=prompt, max_new_tokens=n, temperature=0.0, ignore_eos=True)


async def _engine(model: Any, **options: Any) -> GenerationEngine:
    engine = GenerationEngine(
        model, eos_token_ids=[2], options=RuntimeOptions(**options), max_context=256
    )
    await engine.start()
    return engine


async def _collect(stream: Any) -> list[int]:
    tokens: list[int] = []
    async with asyncio.timeout(HANG_GUARD):
        async for event in stream:
            tokens.extend(event.token_ids)
    return tokens


async def _idle(engine: GenerationEngine) -> None:
    """Wait until continuous batching has dropped its last request (cancelled ones linger a
    step), so the next submit finds the engine idle."""
    async with asyncio.timeout(HANG_GUARD):
        while not engine._manager_idle():
            await asyncio.sleep(0.01)


async def test_a_request_alone_decodes_solo_and_matches_generate(tiny_models: TinyModels) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    expected = _reference(model, prompt, 20)
    counted = _Counted(model)
    engine = await _engine(model)
    try:
        batched_before = counted.batched  # the start-up probe runs in continuous batching
        tokens = await _collect(engine.submit(_greedy(prompt, 20)))
    finally:
        await engine.aclose()
    assert tokens == expected
    assert counted.solo == 20  # one prefill, then one step per further token
    assert counted.batched == batched_before


async def test_a_second_request_hands_the_first_over_to_continuous_batching(
    tiny_models: TinyModels,
) -> None:
    model = _load(tiny_models.llama)
    first, second = _prompt(tiny_models.llama), _prompt(tiny_models.llama, "the quick brown fox")
    expected = [_reference(model, first, 40), _reference(model, second, 12)]
    counted = _Counted(model)
    engine = await _engine(model)
    try:
        solo = engine.submit(_greedy(first, 40))
        async with asyncio.timeout(HANG_GUARD):
            head: list[TokenEvent] = [await anext(solo) for _ in range(3)]
        steps_alone = counted.solo
        other = engine.submit(_greedy(second, 12))
        rest, tokens = await asyncio.gather(_collect(solo), _collect(other))
    finally:
        await engine.aclose()
    # The first request's tokens run on without a gap or a repeat across the handover, and
    # both are the greedy tokens of plain generate.
    assert [t for event in head for t in event.token_ids] + rest == expected[0]
    assert tokens == expected[1]
    assert 3 <= steps_alone <= counted.solo <= steps_alone + 1  # at most the step in flight
    assert counted.batched >= 12
    assert engine.stats.completed == 3  # the probe and both requests


async def test_seeded_sampling_is_the_same_alone_and_batched(tiny_models: TinyModels) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)
    request = GenerationRequest(
        prompt_ids=prompt, max_new_tokens=16, temperature=1.0, seed=42, ignore_eos=True
    )
    try:
        alone = await _collect(engine.submit(request))
        assert counted.solo == 16
        batched, _ = await asyncio.gather(
            _collect(engine.submit(request)),
            _collect(engine.submit(_greedy(_prompt(tiny_models.llama, "other"), 16))),
        )
    finally:
        await engine.aclose()
    assert alone == batched
    assert len(alone) == 16
    assert alone != _reference(model, prompt, 16)  # it really sampled


async def test_solo_decode_off_keeps_every_step_in_continuous_batching(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFSERVE_SOLO_DECODE", "false")  # what docs/skills.md tells operators
    options = runtime_options_from(Settings())
    assert options.solo_decode is False
    model = _load(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model, solo_decode=options.solo_decode)
    try:
        tokens = await _collect(engine.submit(_greedy(_prompt(tiny_models.llama), 8)))
    finally:
        await engine.aclose()
    assert len(tokens) == 8
    assert counted.solo == 0


async def test_cancelling_a_solo_or_held_request_frees_the_engine(tiny_models: TinyModels) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)
    try:
        doomed = engine.submit(_greedy(prompt, 200))
        async with asyncio.timeout(HANG_GUARD):
            await anext(doomed)
        await doomed.aclose()
        assert engine.active == 0
        solo_steps = counted.solo
        # The solo thread stops after the step in flight: the next request runs alone again.
        tokens = await _collect(engine.submit(_greedy(prompt, 5)))
        assert len(tokens) == 5
        assert solo_steps + 5 <= counted.solo <= solo_steps + 6
        # A second request hands the first over; cancelled at once, it leaves the first to
        # finish in the batch.
        running = engine.submit(_greedy(prompt, 30))
        second = engine.submit(_greedy(prompt, 30))
        await second.aclose()
        assert len(await _collect(running)) == 30
        assert engine.stats.cancelled == 2
    finally:
        await engine.aclose()


async def test_a_forward_that_fails_alone_falls_back_to_continuous_batching(
    tiny_models: TinyModels, caplog: pytest.LogCaptureFixture
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    expected = _reference(model, prompt, 10)
    counted = _Counted(model)
    counted.fail_solo = TypeError("unexpected keyword argument 'past_key_values'")
    engine = await _engine(model)
    try:
        with caplog.at_level(logging.WARNING, logger="hfserve.skills.generation.engine"):
            tokens = await _collect(engine.submit(_greedy(prompt, 10)))
        # ... and stays off: the next request does not try again.
        again = await _collect(engine.submit(_greedy(prompt, 10)))
    finally:
        await engine.aclose()
    assert tokens == again == expected
    assert counted.solo == 1
    assert "batch-1 decoding is off" in caplog.text


async def test_a_solo_step_that_fails_after_the_forward_fails_the_request(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load(tiny_models.llama)
    engine = await _engine(model)
    assert engine._stage is not None

    def broken(new_tokens: dict[int, int]) -> Any:
        raise RuntimeError("grammar engine fell over")

    monkeypatch.setattr(engine._stage, "collect", broken)
    try:
        with pytest.raises(InferenceError, match="grammar engine fell over"):
            await _collect(engine.submit(_greedy(_prompt(tiny_models.llama), 4)))
    finally:
        await engine.aclose()
    assert engine.stats.failed == 1


async def test_aclose_stops_a_solo_run(tiny_models: TinyModels) -> None:
    model = _load(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)
    solo = engine.submit(_greedy(_prompt(tiny_models.llama), 200))
    async with asyncio.timeout(HANG_GUARD):
        await anext(solo)
    await engine.aclose()  # waits for the solo thread's step in flight
    steps = counted.solo
    with pytest.raises(ShuttingDownError):
        await _collect(solo)
    assert engine.active == 0
    assert steps < 200
    # aclose stopped the run after its step in flight and shut the solo thread down.
    assert not [t for t in threading.enumerate() if t.name.startswith("hfserve-solo")]


async def test_a_handover_to_a_dead_manager_fails_the_requests(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    engine = await _engine(model)
    try:
        solo = engine.submit(_greedy(prompt, 200))
        async with asyncio.timeout(HANG_GUARD):
            await anext(solo)
        # The manager's thread is gone: it refuses the solo run's handover and the new request.
        monkeypatch.setattr(engine._manager, "add_request", lambda *a, **k: None)
        with pytest.raises(InferenceError, match="engine stopped"):
            engine.submit(_greedy(prompt, 20))
        with pytest.raises(InferenceError, match="engine stopped"):
            await _collect(solo)
        assert engine.active == 0
        assert engine.stats.failed == 1
    finally:
        await engine.aclose()


async def test_the_engine_goes_solo_again_once_the_batch_has_drained(
    tiny_models: TinyModels,
) -> None:
    # A cancelled request stays scheduled until the manager's next step (a request that comes
    # in meanwhile goes to continuous batching, so only one thread ever steps the stage); once
    # the scheduler is empty, the next request decodes alone again.
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model, solo_decode=True)
    try:
        first = engine.submit(_greedy(prompt, 200))
        second = engine.submit(_greedy(prompt, 200))  # hands the first over
        async with asyncio.timeout(HANG_GUARD):
            await anext(second)
        await first.aclose()
        await second.aclose()
        await _idle(engine)
        solo_before = counted.solo
        assert len(await _collect(engine.submit(_greedy(prompt, 6)))) == 6
        assert counted.solo == solo_before + 6
    finally:
        await engine.aclose()
