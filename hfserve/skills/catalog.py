"""The built-in skills: where they live, and the metadata of the encoder skills."""

from __future__ import annotations

from hfserve.skills.base import TASK_CLASSIFICATION, TASK_EMBEDDINGS, SkillInfo

__all__ = ["BUILTIN_SKILLS", "CLASSIFICATION_INFO", "EMBEDDINGS_INFO"]

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

# "module:class" of each built-in skill, in resolution priority order. Skill modules must stay
# light at import time (torch is imported inside ``load``): listing skills imports them.
BUILTIN_SKILLS: tuple[str, ...] = (
    "hfserve.skills.text_generation:TextGenerationSkill",
    "hfserve.skills.embeddings:EmbeddingsSkill",
    "hfserve.skills.classification:ClassificationSkill",
    "hfserve.skills.vision:ImageTextToTextSkill",
)
