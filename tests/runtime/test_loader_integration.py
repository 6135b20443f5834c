"""The whole path on real tiny models: discovery -> device -> load -> cache -> evict -> breaker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfserve.core.breaker import BreakerState
from hfserve.core.clock import FakeClock
from hfserve.errors import CircuitOpenError, ModelLoadError, ShuttingDownError
from hfserve.hardware import probe
from hfserve.runtime.loader import ModelLoader
from hfserve.runtime.specs import parse_model_spec
from hfserve.settings import Settings
from hfserve.skills.base import ClassificationModel, EmbeddingModel, RuntimeOptions
from hfserve.skills.embeddings import EmbeddingsSkill
from tests.fixtures.tiny_models import TinyModels


class Events:
    def __init__(self) -> None:
        self.loads: list[str] = []
        self.evictions: list[tuple[str, str]] = []
        self.failures: list[str] = []

    def on_load(self, model: str, seconds: float) -> None:
        self.loads.append(model)

    def on_evict(self, model: str, reason: str) -> None:
        self.evictions.append((model, reason))

    def on_load_failure(self, model: str) -> None:
        self.failures.append(model)


async def test_discovery_load_cache_evict_pin_and_breaker(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-bert"
    broken.mkdir()
    (broken / "config.json").write_text(
        json.dumps({"architectures": ["BertModel"], "model_type": "bert"})
    )
    clock = FakeClock()
    events = Events()
    # Budget: the pinned embedder plus room for one more model of its size, not two.
    size = (
        EmbeddingsSkill()
        .load(str(tiny_models.bert), "cpu", "float32", RuntimeOptions())
        .memory_bytes()
    )
    settings = Settings(
        models=[f"emb={tiny_models.bert}"],
        device="auto",
        cache_memory=size * 2 + size // 2,
        breaker_failures=2,
        breaker_recovery=60,
    )
    hardware = probe()
    assert hardware.choice.device == "cpu"  # hardware selection: no accelerator here
    loader = ModelLoader(settings, clock=clock, hardware=hardware, observer=events)
    try:
        emb = await loader.get("emb")
        assert isinstance(emb, EmbeddingModel)
        assert (emb.device, emb.dtype, emb.info.name) == ("cpu", "float32", "embeddings")
        vectors = (await emb.embed(["hello world"])).vectors
        assert len(vectors[0]) == 32
        assert await loader.get("emb") is emb  # cache hit
        assert loader.cache.stats.hits >= 1 and events.loads == ["emb"]

        assert emb.memory_bytes() == size
        loader.add_model(parse_model_spec(f"cls={tiny_models.bert_cls}", pinned=False))
        loader.add_model(parse_model_spec(f"emb2={tiny_models.bert}", pinned=False))
        cls = await loader.get("cls")
        assert isinstance(cls, ClassificationModel)
        assert (await cls.classify(["hi"])).items[0][0].label in {"negative", "neutral", "positive"}
        emb2 = await loader.get("emb2")  # does not fit beside emb + cls: cls is evicted
        assert loader.loaded() == ["emb", "emb2"]
        assert ("cls", "bytes") in events.evictions
        assert cls._model is None  # type: ignore[attr-defined]  # weights dropped, memory freed
        with pytest.raises(ShuttingDownError, match="not running"):
            await cls.classify(["after eviction"])
        assert loader.cache.is_pinned("emb") and not loader.cache.is_pinned("emb2")
        assert emb2 is not emb

        # A model whose load raises trips its breaker after N tries, then is refused fast.
        loader.add_model(parse_model_spec(f"broken={broken}", pinned=False))
        for _ in range(2):
            with pytest.raises(ModelLoadError, match="cannot load model 'broken'"):
                await loader.get("broken")
        with pytest.raises(CircuitOpenError):
            await loader.get("broken")
        assert events.failures == ["broken", "broken"]
        clock.advance(61)
        assert loader.breaker("broken").state is BreakerState.HALF_OPEN
        with pytest.raises(ModelLoadError):
            await loader.get("broken")  # the probe fails: open again
        assert loader.breaker("broken").state is BreakerState.OPEN
    finally:
        await loader.aclose()
    assert loader.loaded() == []


async def test_third_party_skill_serves_a_model_through_the_loader(
    echo_plugin: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "echo-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["EchoModel"], "scale": 2.0}))
    loader = ModelLoader(Settings(models=[str(folder)], device="cpu"))
    try:
        model = await loader.get("echo-model")
        assert model.info.name == "echo" and model.info.source == "hfserve-echo-skill"
        assert isinstance(model, EmbeddingModel)
        result = await model.embed(["ab"])
        assert result.vectors == [[4.0, 2.0 * (97 + 98)]]
    finally:
        await loader.aclose()
    assert model.closed  # type: ignore[attr-defined]
