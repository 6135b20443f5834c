"""A third-party hfserve skill with no torch: deterministic "embeddings" of text.

It serves folders whose ``config.json`` names the ``EchoModel`` architecture; each vector
holds the text's length and byte sum, scaled by the folder's ``scale`` setting, so tests can
tell exactly which model produced it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from hfserve.skills.base import EmbeddingResult, RuntimeOptions, SkillInfo

NOT_A_SKILL = 42


class EchoModel:
    """A loaded echo model."""

    def __init__(
        self, info: SkillInfo, model_id: str, device: str, dtype: str, scale: float
    ) -> None:
        self.info = info
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.scale = scale
        self.started = False
        self.closed = False

    @property
    def max_input_tokens(self) -> int:
        return 1024

    @property
    def vocab_size(self) -> int:
        return 256  # token ids are echoed back as bytes

    def memory_bytes(self) -> int:
        return 1000

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.closed = True

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> EmbeddingResult:
        vectors = []
        for item in inputs:
            data = item.encode() if isinstance(item, str) else bytes(item)
            vectors.append([len(data) * self.scale, sum(data) * self.scale])
        tokens = sum(self.count_tokens(i) if isinstance(i, str) else len(i) for i in inputs)
        return EmbeddingResult(vectors=vectors, prompt_tokens=tokens)


class EchoSkill:
    """Serves ``EchoModel`` folders."""

    info = SkillInfo(
        name="echo",
        task="embeddings",
        architectures=("EchoModel",),
        endpoints=("/v1/embeddings",),
        hardware=("cpu",),
        description="Echo embeddings for plugin tests",
        version="0.1.0",
    )

    def load(self, model_path: str, device: str, dtype: str, options: RuntimeOptions) -> EchoModel:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        return EchoModel(self.info, model_path, device, dtype, float(config.get("scale", 1.0)))
