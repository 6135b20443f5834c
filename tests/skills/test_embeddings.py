"""The embeddings skill: equal to sentence-transformers, pooling modes, truncation, batching."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hfserve.errors import InvalidRequestError, ModelLoadError, ShuttingDownError
from hfserve.runtime.demo import minilm_path
from hfserve.skills._encoder import pool
from hfserve.skills.base import EmbeddingModel, RuntimeOptions
from hfserve.skills.embeddings import EmbeddingsSkill, PoolingConfig, read_pooling_config
from tests.fixtures.tiny_models import TinyModels

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "hfserve serves models",
    "A much longer sentence that talks about embeddings, vectors and cosine similarity " * 2,
    "x",
]


class BatchLog:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_batch(self, model: str, size: int, queue_waits: object, run_seconds: float) -> None:
        self.sizes.append(size)


async def _loaded(path: Path | str, **options: object) -> AsyncIterator[EmbeddingModel]:
    model = EmbeddingsSkill().load(str(path), "cpu", "float32", RuntimeOptions(**options))  # type: ignore[arg-type]
    assert isinstance(model, EmbeddingModel)
    await model.start()
    try:
        yield model
    finally:
        await model.aclose()


@pytest.fixture(scope="module")
def sentence_transformer() -> object:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


@pytest.mark.slow
async def test_minilm_matches_sentence_transformers_encode(sentence_transformer: object) -> None:
    log = BatchLog()
    async for model in _loaded(minilm_path(), batch_observer=log):
        result = await model.embed(TEXTS)
        assert model.max_input_tokens == 256  # sentence_bert_config.json, not the 512 positions
        assert model.vocab_size == 30522  # bert-base-uncased's vocabulary
        assert result.truncated == 0
        expected = sentence_transformer.encode(TEXTS)  # type: ignore[attr-defined]
        np.testing.assert_allclose(np.array(result.vectors), expected, atol=1e-5, rtol=0)
        assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
        assert result.prompt_tokens == sum(model.count_tokens(t) for t in TEXTS)
        assert sum(log.sizes) == len(TEXTS)
        # Token ids are the text's tokens: the same vector comes back.
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(str(minilm_path()))(TEXTS[0], add_special_tokens=False)
        by_ids = await model.embed([ids["input_ids"]])
        np.testing.assert_allclose(by_ids.vectors[0], result.vectors[0], atol=1e-6)
        expected_mem = sum(p.numel() * 4 for p in model._model.parameters())  # type: ignore[attr-defined]
        assert model.memory_bytes() >= expected_mem


@pytest.mark.slow
async def test_long_input_is_truncated_and_reported(sentence_transformer: object) -> None:
    # Over 2,048 characters, so it is tokenized in a worker thread rather than on the loop.
    long_text = "word " * 500
    async for model in _loaded(minilm_path()):
        result = await model.embed([long_text, "short"])
        assert result.truncated == 1
        assert result.prompt_tokens == 256 + model.count_tokens("short")
        expected = sentence_transformer.encode([long_text])  # type: ignore[attr-defined]
        np.testing.assert_allclose(result.vectors[0], expected[0], atol=1e-5)


async def test_plain_encoder_gets_normalised_mean_pooling(tiny_models: TinyModels) -> None:
    from transformers import AutoModel, AutoTokenizer

    async for model in _loaded(tiny_models.bert, max_batch_size=2):
        assert model.max_input_tokens == 64
        result = await model.embed(["hello world", "the lazy dog", "tiny"])
        tok = AutoTokenizer.from_pretrained(str(tiny_models.bert))
        ref = AutoModel.from_pretrained(str(tiny_models.bert)).eval()
        batch = tok(["hello world"], return_tensors="pt")
        with torch.no_grad():
            hidden = ref(**batch).last_hidden_state
        vec = torch.nn.functional.normalize(hidden.mean(dim=1), dim=1)[0]
        np.testing.assert_allclose(result.vectors[0], vec.numpy(), atol=1e-5)
        assert len(result.vectors) == 3


async def test_bad_inputs_are_invalid_requests(tiny_models: TinyModels) -> None:
    async for model in _loaded(tiny_models.bert):
        with pytest.raises(InvalidRequestError, match="at least one input"):
            await model.embed([])
        with pytest.raises(InvalidRequestError, match="token ids must be integers"):
            await model.embed([[1, -5]])
    with pytest.raises(ShuttingDownError, match="not running"):
        await model.embed(["after close"])


def _st_folder(tmp_path: Path, base: Path, pooling: dict[str, object], modules: list[str]) -> Path:
    folder = tmp_path / "st"
    shutil.copytree(base, folder)
    entries = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
    ]
    for i, kind in enumerate(modules, start=1):
        entries.append(
            {
                "idx": i,
                "name": str(i),
                "path": f"{i}_{kind}",
                "type": f"sentence_transformers.models.{kind}",
            }
        )
    (folder / "modules.json").write_text(json.dumps(entries))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 16, "do_lower_case": True})
    )
    return folder


def test_read_pooling_config_variants(tmp_path: Path, tiny_models: TinyModels) -> None:
    assert read_pooling_config(tiny_models.bert) == PoolingConfig()
    folder = _st_folder(tmp_path, tiny_models.bert, {"pooling_mode": ["cls", "max"]}, ["Pooling"])
    config = read_pooling_config(folder)
    assert config.modes == ("cls", "max") and not config.normalize
    assert config.max_seq_length == 16 and config.lowercase and config.sentence_transformers
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    assert read_pooling_config(folder).modes == ("lasttoken",)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "median"}))
    with pytest.raises(ModelLoadError, match="unknown pooling mode"):
        read_pooling_config(folder)
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_pooling_config(folder)


def test_unsupported_module_is_refused(tmp_path: Path, tiny_models: TinyModels) -> None:
    folder = _st_folder(tmp_path, tiny_models.bert, {}, ["Pooling", "Dense"])
    with pytest.raises(ModelLoadError, match=r"Dense.*not supported"):
        read_pooling_config(folder)
    (folder / "modules.json").write_text("[")
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_pooling_config(folder)


async def test_st_folder_limits_length_and_honours_pooling(
    tmp_path: Path, tiny_models: TinyModels
) -> None:
    folder = _st_folder(
        tmp_path, tiny_models.bert, {"pooling_mode": "cls"}, ["Pooling", "Normalize"]
    )
    async for model in _loaded(folder):
        assert model.max_input_tokens == 16
        result = await model.embed(["HELLO " * 30, "hello"])
        assert result.truncated == 1
        assert np.isclose(np.linalg.norm(result.vectors[1]), 1.0)
        lower = await model.embed(["hello"])
        np.testing.assert_allclose(lower.vectors[0], result.vectors[1], atol=1e-6)


def test_pool_modes_by_hand() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    out = pool(
        hidden, mask, ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
    )
    sqrt2 = 2**0.5
    expected = [1, 2, 3, 4, 2, 3, 4 / sqrt2, 6 / sqrt2, 7 / 3, 10 / 3, 3, 4]
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6)
    left = pool(torch.tensor([[[9.0], [5.0], [7.0]]]), torch.tensor([[0, 1, 1]]), ["lasttoken"])
    assert left.item() == 7.0
    with pytest.raises(ValueError, match="unknown pooling mode"):
        pool(hidden, mask, ["median"])
    half = pool(hidden.half(), mask, ["mean"])
    assert half.dtype == torch.float32
