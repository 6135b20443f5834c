"""The text-classification skill: softmax scores over id2label, highest first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from hfserve.skills.base import ClassificationModel, RuntimeOptions
from hfserve.skills.classification import ClassificationSkill
from tests.fixtures.tiny_models import TinyModels


async def test_scores_match_the_model_and_are_sorted(tiny_models: TinyModels) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = ClassificationSkill().load(
        str(tiny_models.bert_cls), "cpu", "float32", RuntimeOptions()
    )
    assert isinstance(model, ClassificationModel)
    await model.start()
    try:
        result = await model.classify(["hello world", "the lazy dog"])
    finally:
        await model.aclose()
    assert len(result.items) == 2 and result.truncated == 0
    tok = AutoTokenizer.from_pretrained(str(tiny_models.bert_cls))
    ref = AutoModelForSequenceClassification.from_pretrained(str(tiny_models.bert_cls)).eval()
    with torch.no_grad():
        probs = torch.softmax(ref(**tok(["hello world"], return_tensors="pt")).logits, -1)[0]
    labels = ["negative", "neutral", "positive"]
    by_label = {s.label: s.score for s in result.items[0]}
    assert set(by_label) == set(labels)
    np.testing.assert_allclose([by_label[name] for name in labels], probs.numpy(), atol=1e-5)
    for row in result.items:
        scores = [s.score for s in row]
        assert scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1) < 1e-5
    assert result.prompt_tokens == model.count_tokens("hello world") + model.count_tokens(
        "the lazy dog"
    )


async def test_multi_label_heads_use_sigmoid(tmp_path: Path, tiny_models: TinyModels) -> None:
    folder = tmp_path / "multi"
    shutil.copytree(tiny_models.bert_cls, folder)
    config = json.loads((folder / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (folder / "config.json").write_text(json.dumps(config))
    model = ClassificationSkill().load(str(folder), "cpu", "float32", RuntimeOptions())
    await model.start()
    try:
        result = await model.classify(["hello"])
    finally:
        await model.aclose()
    scores = [s.score for s in result.items[0]]
    assert all(0 < s < 1 for s in scores) and abs(sum(scores) - 1) > 1e-3
