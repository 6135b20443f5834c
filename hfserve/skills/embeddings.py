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
        from transformers import AutoModel

        from hfserve.skills._encoder import EncoderEmbeddingModel, load_encoder

        folder = local_folder(model_path)
        pooling = read_pooling_config(folder)
        return load_encoder(
            EncoderEmbeddingModel,
            AutoModel,
            str(folder / pooling.transformer_path),
            device=device,
            dtype=dtype,
            options=options,
            max_seq_length=pooling.max_seq_length,
            info=self.info,
            model_id=model_path,
            lowercase=pooling.lowercase,
            pooling=pooling,
        )
