"""An example hfserve skill plugin: a keyword text classifier with no torch at all.

A *skill* tells hfserve how to load one kind of model. This one serves folders whose
``config.json`` names the ``KeywordClassifier`` architecture and lists keywords per label; it
scores each input by how many of each label's keywords it contains. Swap the scoring for a
real model (``transformers``, ONNX Runtime, an HTTP call...) and the rest stays the same.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from hfserve.skills.base import (
    TASK_CLASSIFICATION,
    ClassificationResult,
    LabelScore,
    RuntimeOptions,
    SkillInfo,
)

__all__ = ["KeywordModel", "KeywordSkill"]

_WORD = re.compile(r"[a-z0-9']+")


class KeywordModel:
    """A loaded keyword classifier: satisfies hfserve's ``ClassificationModel`` protocol."""

    def __init__(
        self, info: SkillInfo, model_id: str, device: str, dtype: str, labels: dict[str, list[str]]
    ) -> None:
        self.info = info
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.labels = {
            label: frozenset(w.lower() for w in words) for label, words in labels.items()
        }

    @property
    def max_input_tokens(self) -> int:
        """The longest input, in words, this model looks at."""
        return 4096

    def memory_bytes(self) -> int:
        """A rough size of the keyword tables, for hfserve's model cache byte budget."""
        return sum(len(w) + 64 for words in self.labels.values() for w in words)

    def count_tokens(self, text: str) -> int:
        """Words stand in for tokens: they are what rate limits and usage count."""
        return len(_WORD.findall(text.lower()))

    async def start(self) -> None:
        """Nothing to start: a real model might spin up a micro-batcher here."""

    async def aclose(self) -> None:
        """Nothing to free: a real model would release its weights here."""

    async def classify(self, inputs: Sequence[str]) -> ClassificationResult:
        """Score each input with a softmax over keyword hits per label, highest first."""
        items = []
        for text in inputs:
            words = _WORD.findall(text.lower())
            hits = {label: sum(w in keys for w in words) for label, keys in self.labels.items()}
            total = sum(math.exp(h) for h in hits.values())
            scores = [LabelScore(label, math.exp(h) / total) for label, h in hits.items()]
            items.append(sorted(scores, key=lambda s: (-s.score, s.label)))
        tokens = sum(self.count_tokens(text) for text in inputs)
        return ClassificationResult(items=items, prompt_tokens=tokens)


class KeywordSkill:
    """Loads ``KeywordClassifier`` folders; registered under the ``hfserve.skills`` group."""

    info = SkillInfo(
        name="keyword-classifier",
        task=TASK_CLASSIFICATION,
        architectures=("KeywordClassifier",),
        model_types=("keyword-classifier",),
        endpoints=("/v1/classifications",),
        hardware=("cpu",),
        description="Example plugin: classify text by keyword counts (no torch)",
        version="0.1.0",
    )

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> KeywordModel:
        """Read the folder's ``config.json``; hfserve calls this in a worker thread."""
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
        labels = config.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise ValueError(f"{model_path}/config.json must map labels to keyword lists")
        return KeywordModel(self.info, model_path, device, dtype, labels)
