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
        from transformers import AutoModelForSequenceClassification

        from hfserve.skills._encoder import EncoderClassificationModel, load_encoder

        return load_encoder(
            EncoderClassificationModel,
            AutoModelForSequenceClassification,
            str(local_folder(model_path)),
            device=device,
            dtype=dtype,
            options=options,
            info=self.info,
            model_id=model_path,
        )
