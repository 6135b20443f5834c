"""The rerank skill: cross-encoder scores equal the model's own, pairs batch and truncate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import torch

from hfserve.errors import InvalidRequestError, ModelLoadError, ShuttingDownError
from hfserve.skills._cross_encoder import CrossEncoderModel, PairIds
from hfserve.skills.base import RerankModel, RuntimeOptions
from hfserve.skills.rerank import RerankSkill
from tests.fixtures.tiny_audio import TinyAudioModels
from tests.fixtures.tiny_models import TinyModels

pytestmark = pytest.mark.slow

PAIRS = [
    ("where is the fox", "the quick brown fox jumps"),
    ("where is the fox", "hello world"),
    ("tokens", "servers batch tokens and stream replies"),
]


@pytest.fixture
async def reranker(tiny_audio_models: TinyAudioModels) -> AsyncIterator[CrossEncoderModel]:
    model = RerankSkill().load(str(tiny_audio_models.reranker), "cpu", "float32", RuntimeOptions())
    assert isinstance(model, CrossEncoderModel) and isinstance(model, RerankModel)
    await model.start()
    yield model
    await model.aclose()


def _reference(folder: str, pairs: list[tuple[str, str]]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tok(
        [q for q, _ in pairs],
        [d for _, d in pairs],
        padding=True,
        truncation=True,
        return_tensors="pt",
    )
    with torch.inference_mode():
        return torch.sigmoid(model(**batch).logits[:, 0]).tolist()  # type: ignore[no-any-return]


async def test_scores_equal_the_models_own(
    reranker: CrossEncoderModel, tiny_audio_models: TinyAudioModels
) -> None:
    result = await reranker.score(PAIRS)
    assert result.scores == pytest.approx(
        _reference(str(tiny_audio_models.reranker), PAIRS), abs=1e-6
    )
    assert result.prompt_tokens == sum(len(ids) for ids in reranker.encode_pairs(PAIRS)[0])
    assert result.truncated == 0
    # Scored alone or in a batch, a pair gets the same score (padding does not leak in).
    alone = await reranker.score(PAIRS[1:2])
    assert alone.scores[0] == pytest.approx(result.scores[1], abs=1e-6)


async def test_concurrent_callers_share_batches_and_keep_their_order(
    reranker: CrossEncoderModel,
) -> None:
    results = await asyncio.gather(*(reranker.score([p] * 3) for p in PAIRS))
    for pair, result in zip(PAIRS, results, strict=True):
        single = (await reranker.score([pair])).scores[0]
        assert result.scores == pytest.approx([single] * 3, abs=1e-6)


async def test_long_pairs_are_truncated_to_the_model_length(reranker: CrossEncoderModel) -> None:
    long_doc = "the quick brown fox " * 200  # thousands of characters: tokenized off the loop
    result = await reranker.score([("fox", long_doc), ("fox", "dog")])
    assert result.truncated == 1
    encoded, _, _ = reranker.encode_pairs([("fox", long_doc)])
    assert len(encoded[0]) == reranker.max_input_tokens
    # The query survives truncation: the longest text is cut first.
    assert 0 < encoded[0].second_start < 10


async def test_token_types_mark_the_document_with_either_padding_side(
    reranker: CrossEncoderModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def record(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None) -> list[float]:
        seen.append(None if types is None else types.tolist())
        return [0.0] * ids.shape[0]

    monkeypatch.setattr(reranker, "_scores", record)
    batch = [PairIds([1, 2, 3, 4], 2), PairIds([1, 2, 3], 3), [7, 8]]
    reranker._run_padded(batch)
    monkeypatch.setattr(reranker, "_pad_left", True)
    reranker._run_padded(batch)
    monkeypatch.setattr(reranker, "_typed", False)
    reranker._run_padded(batch)
    # The second text is type 1; padding, a pair without a second text and a plain list are 0.
    assert seen == [
        [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
        None,
    ]


async def test_forward_scores_without_token_types(reranker: CrossEncoderModel) -> None:
    ids = torch.tensor([[1, 2, 3]])
    scores = reranker._forward(ids, torch.ones(1, 3, dtype=torch.long))
    assert len(scores) == 1 and 0.0 < scores[0] < 1.0


async def test_counts_refusals_and_close(reranker: CrossEncoderModel) -> None:
    assert reranker.count_tokens("hello world") == len(
        reranker._tokenizer("hello world")["input_ids"]
    )
    assert reranker.memory_bytes() > 0
    with pytest.raises(InvalidRequestError) as empty:
        await reranker.score([])
    assert empty.value.param == "documents"
    await reranker.aclose()
    with pytest.raises(ShuttingDownError):
        await reranker.score(PAIRS)


def test_a_multi_label_classifier_is_not_a_reranker(tiny_models: TinyModels) -> None:
    with pytest.raises(ModelLoadError, match=r"3 labels.*--task text-classification"):
        RerankSkill().load(str(tiny_models.bert_cls), "cpu", "float32", RuntimeOptions())


def test_pair_ids_are_a_list_with_a_boundary() -> None:
    ids: Any = PairIds([5, 6, 7], 1)
    assert ids == [5, 6, 7] and len(ids) == 3 and ids.second_start == 1
