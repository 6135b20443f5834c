"""The text-generation skill: loading, chat rendering, streaming text, stops and shutdown."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfserve.errors import InvalidRequestError, ModelLoadError, ShuttingDownError
from hfserve.skills.base import (
    GenerationChunk,
    GenerationModel,
    GenerationRequest,
    RuntimeOptions,
    Skill,
)
from hfserve.skills.text_generation import (
    LoadedTextGenerator,
    TextGenerationSkill,
    _context_length,
    _Detokenizer,
    _eos_ids,
    _StopMatcher,
)
from tests.fixtures.tiny_models import TinyModels

HANG_GUARD = 60
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]


@pytest.fixture
async def llama(tiny_models: TinyModels) -> AsyncIterator[LoadedTextGenerator]:
    """The tiny Llama loaded through the skill and started."""
    loaded = TextGenerationSkill().load(str(tiny_models.llama), "cpu", "float32", RuntimeOptions())
    await loaded.start()
    yield loaded
    await loaded.aclose()


async def _chunks(model: LoadedTextGenerator, request: GenerationRequest) -> list[GenerationChunk]:
    out = []
    async with asyncio.timeout(HANG_GUARD):
        async for chunk in model.generate(request):
            out.append(chunk)
    return out


def _greedy(model: LoadedTextGenerator, n: int, **kw: Any) -> GenerationRequest:
    prompt = model.encode(model.render_chat(MESSAGES))
    return GenerationRequest(prompt_ids=prompt, max_new_tokens=n, temperature=0.0, **kw)


def test_skill_metadata() -> None:
    skill = TextGenerationSkill()
    assert isinstance(skill, Skill)
    assert skill.info.name == "text-generation"
    assert skill.info.task == "text-generation"
    assert "*ForCausalLM" in skill.info.architectures
    assert "GPT2LMHeadModel" in skill.info.architectures
    assert skill.info.endpoints == ("/v1/chat/completions", "/v1/completions")


@pytest.mark.slow
async def test_loaded_model_satisfies_the_contract(llama: LoadedTextGenerator) -> None:
    assert isinstance(llama, GenerationModel)
    assert llama.device == "cpu"
    assert llama.dtype == "float32"
    assert llama.max_input_tokens == 256
    assert llama.vocab_size == llama._model.get_input_embeddings().num_embeddings
    assert llama.active_generations == 0
    text = "hello world 🙂"
    assert llama.count_tokens(text) == len(llama.encode(text)) > 0
    tokenizer = AutoTokenizer.from_pretrained(llama.model_id)
    assert llama.encode(text) == tokenizer.encode(text)
    # Weights plus the KV cache the engine allocated.
    weights = sum(p.numel() * p.element_size() for p in llama._model.parameters())
    assert llama.memory_bytes() > weights


@pytest.mark.slow
async def test_render_chat_uses_the_template_with_a_generation_prompt(
    llama: LoadedTextGenerator,
) -> None:
    rendered = llama.render_chat(MESSAGES)
    assert rendered == "<|system|>be brief<|end|>\n<|user|>hello world<|end|>\n<|assistant|>"


STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('only user and assistant roles') }}{% endif %}"
    "{{ m['content'] }}{% endfor %}"
)


@pytest.mark.slow
def test_chat_template_problems_are_invalid_requests(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(tiny_models.gpt2, folder)
    (folder / "chat_template.jinja").unlink()
    loaded = TextGenerationSkill().load(str(folder), "cpu", "float32", RuntimeOptions())
    with pytest.raises(InvalidRequestError, match="no chat template") as info:
        loaded.render_chat(MESSAGES)
    assert info.value.param == "messages"

    (folder / "chat_template.jinja").write_text(STRICT_TEMPLATE, encoding="utf-8")
    strict = TextGenerationSkill().load(str(folder), "cpu", "float32", RuntimeOptions())
    assert strict.render_chat(MESSAGES[1:]) == "hello world"
    with pytest.raises(InvalidRequestError, match="only user and assistant roles"):
        strict.render_chat(MESSAGES)


def test_unloadable_path_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load"):
        TextGenerationSkill().load(str(tmp_path / "missing"), "cpu", "float32", RuntimeOptions())


def test_auto_is_resolved_before_a_skill_loads(tmp_path: Path) -> None:
    # One dtype policy: hardware.choose_device resolves "auto"; a skill never sees it.
    with pytest.raises(ModelLoadError, match="unsupported dtype 'auto'"):
        TextGenerationSkill().load(str(tmp_path / "missing"), "cpu", "auto", RuntimeOptions())


@pytest.mark.slow
async def test_greedy_text_streams_the_model_generate_tokens(llama: LoadedTextGenerator) -> None:
    request = _greedy(llama, 10, ignore_eos=True)
    reference = AutoModelForCausalLM.from_pretrained(llama.model_id, dtype=torch.float32)
    expected = reference.generate(
        torch.tensor([request.prompt_ids]), do_sample=False, max_new_tokens=10, min_new_tokens=10
    )[0, len(request.prompt_ids) :].tolist()
    chunks = await _chunks(llama, request)
    assert [t for c in chunks for t in c.token_ids] == expected
    tokenizer = AutoTokenizer.from_pretrained(llama.model_id)
    assert "".join(c.text for c in chunks) == tokenizer.decode(expected, skip_special_tokens=True)
    assert [c.finish_reason for c in chunks][-1] == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].completion_tokens == 10
    assert {c.prompt_tokens for c in chunks} == {len(request.prompt_ids)}
    assert llama.active_generations == 0


@pytest.mark.slow
async def test_stop_sequence_across_chunks_ends_generation(llama: LoadedTextGenerator) -> None:
    chunks = await _chunks(llama, _greedy(llama, 16, ignore_eos=True))
    pieces = [c.text for c in chunks]
    full = "".join(pieces)
    # A stop string made of the end of one chunk and the start of the next.
    i = next(i for i in range(len(pieces) - 1) if pieces[i] and pieces[i + 1])
    stop = pieces[i][-1] + pieces[i + 1][0]
    expected = full[: full.find(stop)]

    stopped = await _chunks(llama, _greedy(llama, 16, ignore_eos=True, stop=("never", stop)))
    assert "".join(c.text for c in stopped) == expected
    assert stopped[-1].finish_reason == "stop"
    assert stopped[-1].completion_tokens < 16
    # The stop cancelled the request in the engine: nothing is left decoding.
    assert llama.engine.stats.cancelled == 1
    assert llama.active_generations == 0


@pytest.mark.slow
async def test_closing_the_iterator_cancels_the_generation(llama: LoadedTextGenerator) -> None:
    stream = llama.generate(_greedy(llama, 200, ignore_eos=True))
    async with asyncio.timeout(HANG_GUARD):
        first = await anext(stream)
    assert first.finish_reason is None
    assert llama.active_generations == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert llama.active_generations == 0
    assert llama.engine.stats.cancelled == 1


@pytest.mark.slow
async def test_aclose_fails_in_flight_generations(tiny_models: TinyModels) -> None:
    loaded = TextGenerationSkill().load(str(tiny_models.gpt2), "cpu", "float32", RuntimeOptions())
    await loaded.start()
    stream = loaded.generate(_greedy(loaded, 200, ignore_eos=True))
    async with asyncio.timeout(HANG_GUARD):
        await anext(stream)
        await loaded.aclose()

    async def drain() -> None:
        async for _ in stream:
            pass

    with pytest.raises(ShuttingDownError):
        await drain()
    assert loaded.active_generations == 0
    assert loaded._model is None


def test_context_length_and_eos_ids_come_from_config_and_tokenizer() -> None:
    def model(positions: Any, eos: Any) -> Any:
        config = SimpleNamespace(max_position_embeddings=positions)
        return SimpleNamespace(
            config=SimpleNamespace(get_text_config=lambda: config),
            generation_config=SimpleNamespace(eos_token_id=eos),
        )

    unlimited = SimpleNamespace(model_max_length=int(1e30), eos_token_id=None)
    assert _context_length(model(2048, None), SimpleNamespace(model_max_length=512)) == 512
    assert _context_length(model(2048, None), unlimited) == 2048
    with pytest.raises(ModelLoadError, match="no context length"):
        _context_length(model(None, None), unlimited)
    assert _eos_ids(model(8, [5, 6]), unlimited) == [5, 6]
    assert _eos_ids(model(8, 5), SimpleNamespace(eos_token_id=7)) == [5, 7]
    assert _eos_ids(model(8, None), SimpleNamespace(eos_token_id=None)) == []


def _tokenizer(tiny_models: TinyModels) -> Any:
    return AutoTokenizer.from_pretrained(tiny_models.llama)


@pytest.mark.slow
def test_detokenizer_never_splits_a_character(tiny_models: TinyModels) -> None:
    tokenizer = _tokenizer(tiny_models)
    text = "🙂 and 漢字 world"
    ids = tokenizer.encode(text)
    detokenizer = _Detokenizer(tokenizer)
    pieces = [detokenizer.push([i]) for i in ids]
    assert "".join(pieces) + detokenizer.flush() == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some token ended inside the emoji and was held back


@pytest.mark.slow
def test_detokenizer_flush_drops_a_dangling_partial_character(tiny_models: TinyModels) -> None:
    tokenizer = _tokenizer(tiny_models)
    emoji = tokenizer.encode("🙂")
    assert len(emoji) > 1
    detokenizer = _Detokenizer(tokenizer)
    assert detokenizer.push([*tokenizer.encode("ok "), emoji[0]]) == ""
    assert detokenizer.flush() == "ok "


def test_stop_matcher_holds_back_a_possible_stop_prefix() -> None:
    matcher = _StopMatcher(["STOP", ""])
    assert matcher.feed("abc ST", final=False) == ("abc ", False)
    assert matcher.feed("O", final=False) == ("", False)
    assert matcher.feed("P tail", final=False) == ("", True)
    other = _StopMatcher(["xyz"])
    assert other.feed("ax", final=False) == ("a", False)
    assert other.feed("b", final=False) == ("xb", False)
    assert other.feed("x", final=True) == ("x", False)


@given(
    text=st.text(alphabet="abc", max_size=30),
    stop=st.text(alphabet="abc", min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=6),
)
def test_stop_matcher_equals_cutting_at_the_first_stop(
    text: str, stop: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    matcher = _StopMatcher([stop])
    emitted, hit = "", False
    for start, end in itertools.pairwise(bounds):
        out, hit = matcher.feed(text[start:end], final=end == len(text))
        emitted += out
        if hit:
            break
    index = text.find(stop)
    assert hit == (index >= 0)
    assert emitted == (text[:index] if index >= 0 else text)
