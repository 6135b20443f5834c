"""The ``text-classification`` skill: ``*ForSequenceClassification`` models, labels and scores."""

from __future__ import annotations

from hfserve.skills.base import LoadedModel, RuntimeOptions
from hfserve.skills.catalog import CLASSIFICATION_INFO
from hfserve.skills.embeddings import local_folder

__all__ = ["ClassificationSkill"]


class ClassificationSkill:
    """Loads sequence classifiers as ``ClassificationModel`` s (softmax; sigmoid if multi-label)."""

    info = CLASSIFICATION_INFO

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> LoadedModel:
        """Load tokenizer and classifier onto ``device`` in ``dtype`` (blocking)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from hfserve.skills._encoder import EncoderClassificationModel, max_input_length
        from hfserve.skills._torch import torch_dtype

        source = str(local_folder(model_path))
        trust = options.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=torch_dtype(dtype), trust_remote_code=trust
        )
        model.to(device)
        model.eval()
        return EncoderClassificationModel(
            info=self.info,
            model_id=model_path,
            device=device,
            dtype=dtype,
            model=model,
            tokenizer=tokenizer,
            max_length=max_input_length(tokenizer, model.config),
            options=options,
        )
