"""The direct path of the generation engine: requests batched over one padded KV cache.

Which path ran a forward is observable from the cache it was given: the direct path passes a
``DynamicCache``, continuous batching its ``PagedAttentionCache``.
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

from hfserve.errors import InferenceError, ModelLoadError, ShuttingDownError
from hfserve.runtime.loader import runtime_options_from
from hfserve.settings import Settings
from hfserve.skills.base import GenerationRequest, RuntimeOptions
from hfserve.skills.generation.direct import DirectUnsupportedError, PaddedBatch
from hfserve.skills.generation.engine import GenerationEngine, TokenEvent
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow

HANG_GUARD = 60
PROMPT = "hello world, this is a tiny corpus"


class _Counted:
    """The model's forward, counting direct and continuous-batching forwards."""

    def __init__(self, model: Any) -> None:
        self.direct = 0
        self.batched = 0
        self.rows: list[int] = []  # batch size of every direct forward
        self.fail_direct_after: int | None = None
        self.failure: BaseException = TypeError("unexpected keyword argument 'attention_mask'")
        self._forward = model.forward
        model.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(cache, DynamicCache):
            if self.fail_direct_after is not None and self.direct >= self.fail_direct_after:
                raise self.failure
            self.direct += 1
            self.rows.append(int(kwargs["input_ids"].size(0)))
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


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("hfserve-decode")]


async def test_a_request_alone_decodes_directly_and_matches_generate(
    tiny_models: TinyModels,
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    expected = _reference(model, prompt, 20)
    counted = _Counted(model)
    engine = await _engine(model)
    try:
        probe = counted.direct  # the start-up probe's one token decodes directly too
        tokens = await _collect(engine.submit(_greedy(prompt, 20)))
    finally:
        await engine.aclose()
    assert tokens == expected
    assert probe == 1
    assert counted.direct - probe == 20  # one prefill, then one step per further token
    # Continuous batching never started: no second thread runs OpenMP regions.
    assert counted.batched == 0
    assert engine._manager is None


async def test_requests_that_join_and_leave_get_the_tokens_they_would_get_alone(
    tiny_models: TinyModels,
) -> None:
    # Different prompt lengths (so rows are padded), a request joining a running batch, and
    # rows leaving at different steps: every request still gets plain generate's tokens.
    model = _load(tiny_models.llama)
    texts = [PROMPT, "the quick brown fox jumps over the lazy dog again and again", "hi"]
    prompts = [_prompt(tiny_models.llama, t) for t in texts]
    lengths = [40, 12, 25]
    expected = [_reference(model, p, n) for p, n in zip(prompts, lengths, strict=True)]
    counted = _Counted(model)
    engine = await _engine(model)
    try:
        first = engine.submit(_greedy(prompts[0], lengths[0]))
        async with asyncio.timeout(HANG_GUARD):
            head: list[TokenEvent] = [await anext(first) for _ in range(3)]
        others = [
            engine.submit(_greedy(p, n)) for p, n in zip(prompts[1:], lengths[1:], strict=True)
        ]
        results = await asyncio.gather(_collect(first), *map(_collect, others))
    finally:
        await engine.aclose()
    assert [t for event in head for t in event.token_ids] + results[0] == expected[0]
    assert results[1:] == expected[1:]
    # They shared steps: fewer forwards than decoding each alone, and some with several rows.
    assert counted.direct < sum(lengths)
    assert max(counted.rows) >= 2
    assert engine.stats.completed == 4  # the probe and the three requests


async def test_seeded_sampling_is_the_same_alone_and_batched(tiny_models: TinyModels) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)
    request = GenerationRequest(
        prompt_ids=prompt, max_new_tokens=16, temperature=1.0, seed=42, ignore_eos=True
    )
    try:
        before = counted.direct
        alone = await _collect(engine.submit(request))
        assert counted.direct - before == 16
        batched, _ = await asyncio.gather(
            _collect(engine.submit(request)),
            _collect(engine.submit(_greedy(_prompt(tiny_models.llama, "other"), 16))),
        )
    finally:
        await engine.aclose()
    assert alone == batched
    assert len(alone) == 16
    assert alone != _reference(model, prompt, 16)  # it really sampled


async def test_direct_decode_off_keeps_every_step_in_continuous_batching(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFSERVE_DIRECT_DECODE", "false")  # what docs/skills.md tells operators
    options = runtime_options_from(Settings())
    assert options.direct_decode is False
    model = _load(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model, direct_decode=options.direct_decode)
    try:
        tokens = await asyncio.gather(
            *(_collect(engine.submit(_greedy(_prompt(tiny_models.llama), 8))) for _ in range(2))
        )
    finally:
        await engine.aclose()
    assert [len(t) for t in tokens] == [8, 8]
    assert counted.direct == 0


async def test_at_most_max_concurrent_generations_rows_decode_at_once(
    tiny_models: TinyModels,
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    expected = _reference(model, prompt, 10)
    counted = _Counted(model)
    engine = await _engine(model, max_concurrent_generations=2)
    try:
        results = await asyncio.gather(
            *(_collect(engine.submit(_greedy(prompt, 10))) for _ in range(5))
        )
    finally:
        await engine.aclose()
    assert results == [expected] * 5
    assert max(counted.rows) == 2  # the others waited for a row


async def test_prompts_past_the_prefill_budget_are_prefilled_apart(
    tiny_models: TinyModels,
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)
    assert engine._direct is not None
    engine._direct._prefill_tokens = len(prompt)  # one prompt per prefill forward
    try:
        # Queued before the decoding thread takes any: all three wait together.
        streams = [engine.submit(_greedy(prompt, 3)) for _ in range(3)]
        results = await asyncio.gather(*map(_collect, streams))
    finally:
        await engine.aclose()
    assert results == [_reference(model, prompt, 3)] * 3
    assert counted.rows.count(1) >= 2  # at least two prefills of one row each


async def test_cancelling_a_row_leaves_the_others_decoding(tiny_models: TinyModels) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    expected = _reference(model, prompt, 30)
    counted = _Counted(model)
    engine = await _engine(model)
    try:
        doomed = engine.submit(_greedy(prompt, 200))
        running = engine.submit(_greedy(prompt, 30))
        async with asyncio.timeout(HANG_GUARD):
            await anext(doomed)
        await doomed.aclose()
        assert await _collect(running) == expected
        assert engine.active == 0
        assert engine.stats.cancelled == 1
        # The cancelled row left after its step in flight: nowhere near its 200 steps.
        assert counted.direct < 60
        # The thread went idle; the next request starts it again.
        assert len(await _collect(engine.submit(_greedy(prompt, 5)))) == 5
    finally:
        await engine.aclose()


async def test_a_forward_that_refuses_padding_moves_to_continuous_batching_for_good(
    tiny_models: TinyModels, caplog: pytest.LogCaptureFixture
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    expected = _reference(model, prompt, 10)
    counted = _Counted(model)
    counted.fail_direct_after = 0
    with caplog.at_level(logging.WARNING, logger="hfserve.skills.generation.engine"):
        engine = await _engine(model)  # the start-up probe finds out and moves
    try:
        tokens = await _collect(engine.submit(_greedy(prompt, 10)))
        # ... and stays off: the next request does not try again.
        again = await _collect(engine.submit(_greedy(prompt, 10)))
    finally:
        await engine.aclose()
    assert tokens == again == expected
    assert counted.direct == 0
    assert "direct decoding is off" in caplog.text


async def test_runs_moved_mid_generation_continue_where_they_were(
    tiny_models: TinyModels,
) -> None:
    model = _load(tiny_models.llama)
    prompts = [_prompt(tiny_models.llama), _prompt(tiny_models.llama, "the quick brown fox")]
    expected = [_reference(model, p, 24) for p in prompts]
    counted = _Counted(model)
    engine = await _engine(model)
    try:
        streams = [engine.submit(_greedy(p, 24)) for p in prompts]
        async with asyncio.timeout(HANG_GUARD):
            heads = [await anext(s) for s in streams]
        counted.fail_direct_after = counted.direct + 3
        rests = await asyncio.gather(*map(_collect, streams))
    finally:
        await engine.aclose()
    # No gap and no repeat across the move, and the tokens plain generate gives.
    for head, rest, want in zip(heads, rests, expected, strict=True):
        assert list(head.token_ids) + rest == want
    assert counted.batched > 0


async def test_a_failing_step_fails_every_request_in_the_batch(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load(tiny_models.llama)
    engine = await _engine(model)
    assert engine._stage is not None

    def broken(new_tokens: dict[int, int]) -> Any:
        raise RuntimeError("grammar engine fell over")

    monkeypatch.setattr(engine._stage, "collect", broken)
    try:
        streams = [engine.submit(_greedy(_prompt(tiny_models.llama), 4)) for _ in range(2)]
        for stream in streams:
            with pytest.raises(InferenceError, match="grammar engine fell over"):
                await _collect(stream)
        monkeypatch.undo()
        # The decoder started over: the next request decodes.
        assert len(await _collect(engine.submit(_greedy(_prompt(tiny_models.llama), 4)))) == 4
    finally:
        await engine.aclose()
    assert engine.stats.failed == 2


async def test_aclose_stops_the_decoding_thread(tiny_models: TinyModels) -> None:
    model = _load(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)
    streams = [engine.submit(_greedy(_prompt(tiny_models.llama), 200)) for _ in range(2)]
    async with asyncio.timeout(HANG_GUARD):
        await anext(streams[0])
    await engine.aclose()  # waits for the decoding thread's step in flight
    steps = counted.direct
    for stream in streams:
        with pytest.raises(ShuttingDownError):
            await _collect(stream)
    assert engine.active == 0
    assert steps < 200
    assert not _decode_threads()


async def test_a_move_to_a_dead_manager_fails_the_requests(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)

    class _Dead:
        """A manager whose thread died: it refuses every request."""

        background_thread_status = type("Status", (), {"fatal_error": "worker crashed"})()

        def add_request(self, *args: Any, **kwargs: Any) -> None:
            return None

        def stop(self, **kwargs: Any) -> None: ...

        def destroy(self) -> None: ...

    monkeypatch.setattr(engine, "_create_manager", lambda loop, stage: _Dead())
    try:
        stream = engine.submit(_greedy(prompt, 200))
        async with asyncio.timeout(HANG_GUARD):
            await anext(stream)
        counted.fail_direct_after = counted.direct  # the model refuses the direct path now
        with pytest.raises(InferenceError, match="worker crashed"):
            await _collect(stream)
        assert engine.active == 0
        assert engine.stats.failed == 1
        with pytest.raises(InferenceError, match="worker crashed"):
            engine.submit(_greedy(prompt, 5))
    finally:
        await engine.aclose()


async def test_when_neither_path_can_run_the_requests_fail_with_why(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _load(tiny_models.llama)
    prompt = _prompt(tiny_models.llama)
    counted = _Counted(model)
    engine = await _engine(model)

    def refuse(loop: Any, stage: Any) -> Any:
        raise ModelLoadError("LlamaForCausalLM does not support transformers' continuous batching")

    monkeypatch.setattr(engine, "_create_manager", refuse)
    try:
        streams = [engine.submit(_greedy(prompt, 200)) for _ in range(2)]
        async with asyncio.timeout(HANG_GUARD):
            await anext(streams[0])
        counted.fail_direct_after = counted.direct
        for stream in streams:
            with pytest.raises(InferenceError, match="does not support"):
                await _collect(stream)
        assert engine.stats.failed == 2
        # Later requests are refused at once, saying why.
        with pytest.raises(InferenceError, match=r"direct decoding failed .*does not support"):
            engine.submit(_greedy(prompt, 5))
        assert engine.active == 0
    finally:
        await engine.aclose()


def test_a_cache_that_cannot_be_padded_is_refused(
    tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.cache_utils import DynamicSlidingWindowLayer

    model = _load(tiny_models.llama)
    original = DynamicCache.__init__

    def sliding(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.layers = [DynamicSlidingWindowLayer(sliding_window=8) for _ in self.layers]

    monkeypatch.setattr(DynamicCache, "__init__", sliding)
    with pytest.raises(DirectUnsupportedError, match="DynamicSlidingWindowLayer"):
        PaddedBatch(model).prefill([_prompt(tiny_models.llama)])


def test_a_padded_batch_cuts_columns_no_row_uses_and_grows_in_place(
    tiny_models: TinyModels,
) -> None:
    model = _load(tiny_models.llama)
    short, long = _prompt(tiny_models.llama, "hi"), _prompt(tiny_models.llama)
    batch = PaddedBatch(model)
    with torch.inference_mode():
        batch.prefill([short])
        batch.prefill([long])  # the short row is padded on the left to the long one
        assert (batch.size, batch.columns) == (2, len(long))
        batch.keep([0])  # the long row leaves: its extra columns were padding for the short
        assert (batch.size, batch.columns) == (1, len(short))
        tokens = [0]
        for _ in range(3):
            tokens = batch.step(tokens).argmax(-1).tolist()
        assert batch.columns == len(short) + 3
        keys = batch._cache.layers[0].keys
        batch.step(tokens)
        grown = batch._cache.layers[0].keys
        assert grown.size(2) == keys.size(2) + 1
        assert grown.data_ptr() == keys.data_ptr()  # written in place, not concatenated
        in_use = sum(2 * layer.keys.numel() * 4 for layer in batch._cache.layers)
        assert batch.nbytes() > in_use  # the spare capacity counts as memory too
        batch.keep([])
        assert (batch.size, batch.columns, batch.nbytes()) == (0, 0, 0)
