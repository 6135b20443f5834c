"""The ``rerank`` skill: cross-encoders (one-label ``*ForSequenceClassification`` models).

A cross-encoder reads the query and a document together (``[CLS] query [SEP] doc [SEP]``);
its single logit says how relevant the document is (ms-marco MiniLM, bge-reranker).
"""

from __future__ import annotations

from hfserve.errors import ModelLoadError
from hfserve.skills.base import LoadedModel, RuntimeOptions
from hfserve.skills.catalog import RERANK_INFO
from hfserve.skills.embeddings import local_folder

__all__ = ["RerankSkill"]


class RerankSkill:
    """Loads cross-encoders as ``RerankModel`` s."""

    info = RERANK_INFO

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> LoadedModel:
        """Load tokenizer and cross-encoder onto ``device`` in ``dtype`` (blocking).

        Raises:
            ModelLoadError: the head has more than one label (a classifier, not a reranker).
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from hfserve.skills._cross_encoder import CrossEncoderModel
        from hfserve.skills._encoder import max_input_length
        from hfserve.skills._torch import torch_dtype

        source = str(local_folder(model_path))
        trust = options.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=torch_dtype(dtype), trust_remote_code=trust
        )
        if int(model.config.num_labels) != 1:
            raise ModelLoadError(
                f"{model_path} has {model.config.num_labels} labels; a reranker (cross-encoder) "
                "has one: serve it with --task text-classification"
            )
        model.to(device)
        model.eval()
        return CrossEncoderModel(
            info=self.info,
            model_id=model_path,
            device=device,
            dtype=dtype,
            model=model,
            tokenizer=tokenizer,
            max_length=max_input_length(tokenizer, model.config),
            options=options,
        )
