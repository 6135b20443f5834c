"""The image-text-to-text skill and its batched generate engine, on a tiny random LLaVA."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from hfserve.errors import (
    InferenceError,
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
    ShuttingDownError,
)
from hfserve.skills.base import (
    GenerationChunk,
    GenerationModel,
    GenerationRequest,
    MultimodalGenerationModel,
    RuntimeOptions,
)
from hfserve.skills.generation.batched import (
    BatchedGenerateEngine,
    _build_sampler,
    _build_stopper,
    _Row,
    _signature,
)
from hfserve.skills.registry import SkillRegistry
from hfserve.skills.vision import ImageTextToTextSkill, LoadedVisionGenerator
from tests.fixtures.tiny_vision import build_tiny_idefics3, png_bytes

pytestmark = pytest.mark.slow
HANG_GUARD = 60


def _image(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (40, 30)) -> Any:
    return Image.open(io.BytesIO(png_bytes(*size, color=color))).convert("RGB")


def _messages(text: str = "what is this?", images: int = 1) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(images)]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture
async def vlm(tiny_llava: Path) -> AsyncIterator[LoadedVisionGenerator]:
    """The tiny LLaVA loaded through the skill and started."""
    options = RuntimeOptions(max_concurrent_generations=4, max_queue=4)
    loaded = ImageTextToTextSkill().load(str(tiny_llava), "cpu", "auto", options)
    await loaded.start()
    yield loaded
    await loaded.aclose()


async def _run(model: LoadedVisionGenerator, request: GenerationRequest) -> list[GenerationChunk]:
    async with asyncio.timeout(HANG_GUARD):
        return [chunk async for chunk in model.generate(request)]


def _request(model: LoadedVisionGenerator, n: int, *, text: str = "what is this?", images: int = 1,
             **kw: Any) -> GenerationRequest:  # fmt: skip
    prepared = model.prepare_chat(_messages(text, images), [_image()] * images)
    kw.setdefault("temperature", 0.0)
    return GenerationRequest(
        prompt_ids=prepared.prompt_ids, max_new_tokens=n, media=prepared.media, **kw
    )


def _ids(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def test_registry_picks_the_skill_from_config(tiny_llava: Path) -> None:
    registry = SkillRegistry()
    assert registry.resolve(str(tiny_llava)).info.name == "image-text-to-text"
    assert any(i.task == "image-text-to-text" for i in registry.list_skills())
    assert registry.search(architecture="Qwen2VLForConditionalGeneration")[0].name == (
        "image-text-to-text"
    )


async def test_loaded_model_protocols_and_sizes(vlm: LoadedVisionGenerator) -> None:
    assert isinstance(vlm, MultimodalGenerationModel)
    assert isinstance(vlm, GenerationModel)
    assert vlm.max_input_tokens == 256
    assert vlm.memory_bytes() > 0
    assert vlm.active_generations == 0
    assert vlm.count_tokens("hello") == len(vlm.encode("hello")) >= 1
    assert vlm.encode("<|endoftext|>hello")[1:] == vlm.encode("hello")


async def test_prepare_chat_expands_image_tokens(vlm: LoadedVisionGenerator) -> None:
    one = vlm.prepare_chat(_messages(), [_image()])
    none = vlm.prepare_chat([{"role": "user", "content": "what is this?"}], [])
    # A 32x32 image in 8x8 patches: 16 image tokens stand in for one placeholder.
    assert len(one.prompt_ids) - len(none.prompt_ids) == 16
    assert tuple(one.media["pixel_values"].shape) == (1, 3, 32, 32)
    assert none.media == {}


async def test_greedy_output_equals_transformers_generate(
    vlm: LoadedVisionGenerator, tiny_llava: Path
) -> None:
    chunks = await _run(vlm, _request(vlm, 8, ignore_eos=True))
    processor = AutoProcessor.from_pretrained(tiny_llava)  # type: ignore[no-untyped-call]
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    text = processor.apply_chat_template(_messages(), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[_image()], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, eos_token_id=None, min_new_tokens=8
        )
    assert _ids(chunks) == out[0, inputs["input_ids"].shape[1] :].tolist()
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 8
    assert chunks[-1].prompt_tokens == inputs["input_ids"].shape[1]


async def test_concurrent_requests_batch_and_match_their_solo_runs(
    vlm: LoadedVisionGenerator,
) -> None:
    short = _request(vlm, 6, text="hi", ignore_eos=True)
    long = _request(vlm, 4, text="describe the colour of this picture", ignore_eos=True)
    alone = [_ids(await _run(vlm, r)) for r in (short, long)]
    text_only = GenerationRequest(vlm.encode("hello"), 3, temperature=0.0, ignore_eos=True)
    together = await asyncio.gather(*(_run(vlm, r) for r in (short, long, text_only)))
    assert [_ids(c) for c in together[:2]] == alone
    assert len(_ids(together[2])) == 3
    assert vlm.engine.stats.completed == 5
    assert vlm.active_generations == 0


async def test_eos_ends_a_row_unless_it_ignores_eos(vlm: LoadedVisionGenerator) -> None:
    first = _ids(await _run(vlm, _request(vlm, 1, ignore_eos=True)))[0]
    # An engine on the same model for which that first greedy token is EOS.
    engine = BatchedGenerateEngine(
        vlm._model, eos_token_ids=[first], pad_token_id=0, options=RuntimeOptions(),
        max_context=256, vocab_size=vlm.engine._vocab_size,
    )  # fmt: skip
    await engine.start()
    try:
        stopping = engine.submit(_request(vlm, 4))
        ignoring = engine.submit(_request(vlm, 4, ignore_eos=True))
        async with asyncio.timeout(HANG_GUARD):
            stopped = [e async for e in stopping]
            ignored = [e async for e in ignoring]
    finally:
        await engine.aclose()
    assert [(e.token_ids, e.finish_reason) for e in stopped] == [([], "stop")]
    tokens = [t for e in ignored for t in e.token_ids]
    assert len(tokens) == 4 and tokens[0] == first
    assert ignored[-1].finish_reason == "length"


async def test_rows_still_end_when_generate_stops_early(
    vlm: LoadedVisionGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = vlm._model.generate

    def short(**kwargs: Any) -> Any:  # generate() ending for a reason of its own
        return real(**kwargs, max_new_tokens=2)

    monkeypatch.setattr(vlm._model, "generate", short)
    chunks = await _run(vlm, _request(vlm, 6, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 2


async def test_seeded_sampling_is_reproducible(vlm: LoadedVisionGenerator) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return _request(vlm, 8, temperature=1.5, top_p=0.9, seed=seed, ignore_eos=True)

    first, again, other = [_ids(await _run(vlm, sampled(s))) for s in (7, 7, 8)]
    assert first == again
    assert first != other
    unseeded = await _run(vlm, _request(vlm, 2, temperature=1.0, ignore_eos=True))
    assert len(_ids(unseeded)) == 2


async def test_stop_sequence_cuts_the_text(vlm: LoadedVisionGenerator) -> None:
    full = "".join(c.text for c in await _run(vlm, _request(vlm, 12, ignore_eos=True)))
    stop = full[3:5]
    assert stop, full
    chunks = await _run(vlm, _request(vlm, 12, ignore_eos=True, stop=(stop,)))
    assert chunks[-1].finish_reason == "stop"
    assert "".join(c.text for c in chunks) == full[: full.find(stop)]


async def test_closing_the_stream_cancels_the_generation(vlm: LoadedVisionGenerator) -> None:
    stream = vlm.generate(_request(vlm, 200, ignore_eos=True))
    async with asyncio.timeout(HANG_GUARD):
        first = await anext(stream)
        await stream.aclose()
    assert first.token_ids
    assert vlm.engine.stats.cancelled == 1
    # The batch ends at its next step: the engine takes new work and finishes it.
    after = await _run(vlm, _request(vlm, 2, ignore_eos=True))
    assert len(_ids(after)) == 2


async def test_a_queued_request_can_be_cancelled_before_it_runs(tiny_llava: Path) -> None:
    options = RuntimeOptions(max_concurrent_generations=1, max_queue=1)
    model = ImageTextToTextSkill().load(str(tiny_llava), "cpu", "auto", options)
    await model.start()
    try:
        running = model.engine.submit(_request(model, 50, ignore_eos=True))
        queued = model.engine.submit(_request(model, 50, ignore_eos=True))
        with pytest.raises(OverloadedError):
            model.engine.submit(_request(model, 5))
        await queued.aclose()
        await queued.aclose()  # closing twice is harmless
        assert model.active_generations == 1
        async with asyncio.timeout(HANG_GUARD):
            tokens = [t async for e in running for t in e.token_ids]
        assert len(tokens) == 50
        assert model.engine.stats.cancelled == 1
    finally:
        await model.aclose()


async def test_close_fails_running_requests_and_refuses_new_ones(tiny_llava: Path) -> None:
    model = ImageTextToTextSkill().load(str(tiny_llava), "cpu", "auto", RuntimeOptions())
    request = _request(model, 200, ignore_eos=True)
    with pytest.raises(ShuttingDownError):
        model.engine.submit(request)  # not started
    await model.start()
    await model.start()  # idempotent
    stream = model.engine.submit(request)
    async with asyncio.timeout(HANG_GUARD):
        await anext(stream)
        await model.aclose()
        with pytest.raises(ShuttingDownError):
            async for _ in stream:
                pass
    await model.engine.aclose()  # idempotent
    with pytest.raises(ShuttingDownError):
        model.engine.submit(request)


async def test_a_failing_generate_fails_its_requests(vlm: LoadedVisionGenerator) -> None:
    bad = GenerationRequest(vlm.encode("hi"), 3, media={"not_a_model_input": torch.zeros(1, 2)})
    with pytest.raises(InferenceError, match="generation failed"):
        await _run(vlm, bad)
    assert len(_ids(await _run(vlm, _request(vlm, 2, ignore_eos=True)))) == 2


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt_ids": []}, "prompt"),
        ({"prompt_ids": [10_000]}, "prompt"),
        ({"max_new_tokens": 0}, "max_tokens"),
        ({"max_new_tokens": 300}, "max_tokens"),
        ({"temperature": -1.0}, None),
    ],
)
async def test_invalid_requests_are_refused(
    vlm: LoadedVisionGenerator, change: dict[str, Any], param: str | None
) -> None:
    base: dict[str, Any] = {"prompt_ids": [1, 2], "max_new_tokens": 2}
    with pytest.raises(InvalidRequestError) as info:
        vlm.engine.submit(GenerationRequest(**(base | change)))
    assert info.value.param == param


async def test_prepare_chat_refuses_what_the_processor_cannot_take(
    vlm: LoadedVisionGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidRequestError, match="processor") as info:
        vlm.prepare_chat(_messages(images=1), [_image(), _image()])  # 2 images, 1 placeholder
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequestError, match="render"):
        vlm.render_chat([{"role": "user", "content": 5}])  # the template iterates content
    monkeypatch.setattr(vlm._processor, "chat_template", None)
    monkeypatch.setattr(vlm._tokenizer, "chat_template", None)
    with pytest.raises(InvalidRequestError, match="no chat template"):
        vlm.render_chat(_messages())


def test_load_failures_are_model_load_errors(tmp_path: Path, tiny_llava: Path) -> None:
    with pytest.raises(ModelLoadError, match="image-text-to-text"):
        ImageTextToTextSkill().load(str(tmp_path), "cpu", "float32", RuntimeOptions())


def _rows(*requests: GenerationRequest) -> list[_Row]:
    return [_Row(r, ()) for r in requests]


def test_sampler_masks_eos_until_min_tokens_and_leaves_greedy_rows() -> None:
    eos = 3
    rows = _rows(
        GenerationRequest([1], 5, temperature=0.0, min_tokens=2),
        GenerationRequest([1], 5, temperature=0.0),
        GenerationRequest([1], 5, temperature=0.0, min_tokens=2, ignore_eos=True),
    )
    scores = torch.zeros(3, 6)
    scores[:, eos] = 10.0
    out = _build_sampler(rows, (eos,))(torch.zeros(3, 1, dtype=torch.long), scores)
    assert out[0, eos] == float("-inf")
    assert out[1, eos] == 10.0 and out[2, eos] == 10.0
    rows[0].produced = 2
    again = _build_sampler(rows, (eos,))(torch.zeros(3, 1, dtype=torch.long), scores)
    assert again is scores  # nothing to change: no copy


def test_stopper_ends_rows_on_eos_and_length_and_skips_finished_rows() -> None:
    engine = BatchedGenerateEngine(
        None, eos_token_ids=[3], pad_token_id=0, options=RuntimeOptions(), max_context=64,
        vocab_size=10,
    )  # fmt: skip
    rows = _rows(
        GenerationRequest([1], 5),
        GenerationRequest([1], 1),
        GenerationRequest([1], 5, ignore_eos=True),
        GenerationRequest([1], 5),
    )
    rows[3].finished = True
    posted: list[Any] = []
    engine.post = posted.extend  # type: ignore[method-assign]
    done = _build_stopper(rows, engine)(torch.tensor([[3], [4], [3], [5]]), None)
    assert done.tolist() == [True, True, False, True]
    events = {id(r): e for r, e in posted}
    assert (events[id(rows[0])].token_ids, events[id(rows[0])].finish_reason) == ([], "stop")
    assert (events[id(rows[1])].token_ids, events[id(rows[1])].finish_reason) == ([4], "length")
    assert (events[id(rows[2])].token_ids, events[id(rows[2])].finish_reason) == ([3], None)
    assert id(rows[3]) not in events


def test_signature_groups_concatenable_inputs() -> None:
    pixels = {"pixel_values": torch.zeros(1, 3, 8, 8)}
    assert _signature(None, 4) == ()
    assert _signature(pixels, 4) == _signature({"pixel_values": torch.ones(2, 3, 8, 8)}, 9)
    assert _signature(pixels, 4) != _signature({"pixel_values": torch.zeros(1, 3, 4, 4)}, 4)
    odd = {"sizes": [(8, 8)]}
    assert _signature(odd, 4) != _signature(odd, 4)  # never batched with anything
    per_token = _signature({"token_type_ids": torch.zeros(1, 4, dtype=torch.long)}, 4)
    assert per_token[0][1] == "per-token"


def test_collate_left_pads_ids_and_per_token_inputs() -> None:
    model = torch.nn.Linear(1, 1)
    model.device = torch.device("cpu")  # type: ignore[assignment]
    model.dtype = torch.float32  # type: ignore[assignment]
    engine = BatchedGenerateEngine(
        model, eos_token_ids=[3], pad_token_id=0, options=RuntimeOptions(), max_context=64,
        vocab_size=10,
    )  # fmt: skip

    def request(ids: list[int], extra: Any) -> GenerationRequest:
        media = {"token_type_ids": torch.ones(1, len(ids), dtype=torch.long), "extra": extra}
        return GenerationRequest(ids, 2, media=media)

    out = engine._collate(_rows(request([5, 6, 7], "x"), request([8], "x")))
    assert out["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert out["token_type_ids"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert out["extra"] == "x"
    half = engine._collate(_rows(GenerationRequest([1], 2, media={"p": torch.zeros(1, 2)})))
    assert half["p"].dtype == torch.float32


async def test_idefics3_batches_tiled_images_by_shape(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = build_tiny_idefics3(tmp_path_factory.mktemp("idefics3") / "tiny-idefics3")
    assert SkillRegistry().resolve(str(path)).info.name == "image-text-to-text"
    model = ImageTextToTextSkill().load(str(path), "cpu", "auto", RuntimeOptions())
    await model.start()
    try:

        def request(text: str, size: tuple[int, int]) -> GenerationRequest:
            prepared = model.prepare_chat(_messages(text), [_image(size=size)])
            return GenerationRequest(
                prepared.prompt_ids, 4, temperature=0.0, ignore_eos=True, media=prepared.media
            )

        square, other = request("hi", (60, 60)), request("describe it", (60, 60))
        wide = request("and this", (64, 20))
        assert square.media and wide.media
        assert square.media["pixel_values"].shape[1] != wide.media["pixel_values"].shape[1]
        alone = [_ids(await _run(model, r)) for r in (square, other, wide)]
        together = await asyncio.gather(*(_run(model, r) for r in (square, other, wide)))
        assert [_ids(c) for c in together] == alone
        assert all(len(ids) == 4 for ids in alone)
    finally:
        await model.aclose()
