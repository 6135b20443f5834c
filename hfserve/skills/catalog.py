"""Metadata of the built-in skills, importable without torch.

``hfserve skills list`` and ``SkillRegistry.resolve`` read these; the skill modules (which
load torch when they load a model) are imported only when a skill is used.
"""

from __future__ import annotations

from hfserve.skills.base import TASK_CLASSIFICATION, TASK_EMBEDDINGS, TASK_GENERATION, SkillInfo

__all__ = ["BUILTIN_SKILLS", "CLASSIFICATION_INFO", "EMBEDDINGS_INFO", "GENERATION_INFO"]

GENERATION_INFO = SkillInfo(
    name="text-generation",
    task=TASK_GENERATION,
    architectures=("*ForCausalLM", "*LMHeadModel"),
    model_types=("gpt2", "llama", "qwen2", "qwen3", "mistral", "phi", "phi3", "gemma", "gemma2"),
    endpoints=("/v1/chat/completions", "/v1/completions"),
    description="Chat and completions from causal language models (GPT-2, Llama, Qwen, "
    "Mistral, Phi, ...) with continuous batching, streaming and per-request sampling.",
    version="1",
)

EMBEDDINGS_INFO = SkillInfo(
    name="embeddings",
    task=TASK_EMBEDDINGS,
    architectures=(
        "BertModel",
        "RobertaModel",
        "XLMRobertaModel",
        "MPNetModel",
        "DistilBertModel",
        "DebertaV2Model",
        "ElectraModel",
        "ModernBertModel",
        "NomicBertModel",
        "*ForMaskedLM",
    ),
    model_types=("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "modernbert"),
    endpoints=("/v1/embeddings",),
    description="Sentence embeddings from encoders and sentence-transformers folders: the "
    "folder's pooling (cls, mean, max, last token) and normalisation, truncation to the "
    "model's max length.",
    version="1",
)

CLASSIFICATION_INFO = SkillInfo(
    name="text-classification",
    task=TASK_CLASSIFICATION,
    architectures=("*ForSequenceClassification",),
    endpoints=("/v1/classifications",),
    description="Sequence classification: every label of the model's id2label with its "
    "probability, highest first.",
    version="1",
)

# (metadata, "module:attribute" of the skill class), in resolution priority order.
BUILTIN_SKILLS: tuple[tuple[SkillInfo, str], ...] = (
    (GENERATION_INFO, "hfserve.skills.text_generation:TextGenerationSkill"),
    (EMBEDDINGS_INFO, "hfserve.skills.embeddings:EmbeddingsSkill"),
    (CLASSIFICATION_INFO, "hfserve.skills.classification:ClassificationSkill"),
)
