"""The ``embeddings`` skill: sentence vectors from encoders and sentence-transformers folders.

Pooling and normalisation follow the folder's sentence-transformers configuration
(``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``), so vectors match
``SentenceTransformer.encode``; a plain encoder gets normalised mean pooling.
"""

from __future__ import annotations

from pathlib import Path

from hfserve.skills.base import LoadedModel, RuntimeOptions
from hfserve.skills.catalog import EMBEDDINGS_INFO
from hfserve.skills.pooling import POOLING_MODES, PoolingConfig, read_pooling_config

__all__ = [
    "POOLING_MODES",
    "EmbeddingsSkill",
    "PoolingConfig",
    "local_folder",
    "read_pooling_config",
]


def local_folder(model_path: str) -> Path:
    """``model_path`` itself when it is a folder, else the Hub snapshot of that repo id.

    The whole snapshot is needed because sentence-transformers keeps pooling settings in
    side files that ``from_pretrained`` does not fetch. Offline, only the local Hub cache is used.
    """
    folder = Path(model_path)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=model_path))


class EmbeddingsSkill:
    """Loads encoders (and sentence-transformers folders) as ``EmbeddingModel`` s."""

    info = EMBEDDINGS_INFO

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> LoadedModel:
        """Load tokenizer and encoder onto ``device`` in ``dtype`` (blocking)."""
        from transformers import AutoModel, AutoTokenizer

        from hfserve.skills._encoder import EncoderEmbeddingModel, max_input_length
        from hfserve.skills._torch import torch_dtype

        folder = local_folder(model_path)
        pooling = read_pooling_config(folder)
        source = str(folder / pooling.transformer_path)
        trust = options.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        model = AutoModel.from_pretrained(source, dtype=torch_dtype(dtype), trust_remote_code=trust)
        model.to(device)
        model.eval()
        return EncoderEmbeddingModel(
            info=self.info,
            model_id=model_path,
            device=device,
            dtype=dtype,
            model=model,
            tokenizer=tokenizer,
            max_length=max_input_length(tokenizer, model.config, pooling.max_seq_length),
            options=options,
            lowercase=pooling.lowercase,
            pooling=pooling,
        )
