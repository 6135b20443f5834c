"""The skill contract: metadata, the loaded-model protocols the server calls, and options.

A *skill* knows how to load and run one kind of model. ``Skill.load`` returns a
``LoadedModel``; depending on the skill's task it also satisfies ``EmbeddingModel``,
``ClassificationModel`` or ``GenerationModel``, which is what the server talks to.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from hfserve.core.batcher import BatchObserver

__all__ = [
    "TASK_CLASSIFICATION",
    "TASK_EMBEDDINGS",
    "TASK_GENERATION",
    "ClassificationModel",
    "ClassificationResult",
    "EmbeddingModel",
    "EmbeddingResult",
    "GenerationChunk",
    "GenerationModel",
    "GenerationRequest",
    "LabelScore",
    "LoadedModel",
    "RuntimeOptions",
    "Skill",
    "SkillInfo",
]

TASK_GENERATION = "text-generation"
TASK_EMBEDDINGS = "embeddings"
TASK_CLASSIFICATION = "text-classification"

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SkillInfo:
    """What a skill handles and serves; shown by ``hfserve skills``."""

    name: str
    task: str
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    hardware: tuple[str, ...] = ("cpu", "cuda", "mps")
    description: str = ""
    version: str = "0"
    source: str = "builtin"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "task": self.task,
            "architectures": list(self.architectures),
            "model_types": list(self.model_types),
            "endpoints": list(self.endpoints),
            "hardware": list(self.hardware),
            "description": self.description,
            "version": self.version,
            "source": self.source,
        }


@dataclass(frozen=True)
class RuntimeOptions:
    """How a loaded model runs: batching, queues and concurrency (from ``Settings``)."""

    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_concurrent_generations: int = 16
    trust_remote_code: bool = False
    batch_observer: BatchObserver | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class LoadedModel(Protocol):
    """A model in memory, ready to serve. ``start`` before use, ``aclose`` to free it."""

    info: SkillInfo
    model_id: str
    device: str
    dtype: str

    @property
    def max_input_tokens(self) -> int:
        """The longest input (in tokens) the model accepts: its context length for generation
        (prompt plus completion), the longest embedded or classified input otherwise. Always a
        real number: ``skills.limits.declared_limit`` drops the "no limit" sentinels."""
        ...

    def memory_bytes(self) -> int:
        """Bytes of weights and buffers this model holds."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` with the model's real tokenizer."""
        ...

    async def start(self) -> None:
        """Start background workers (batcher, engine)."""
        ...

    async def aclose(self) -> None:
        """Stop workers, fail pending work with a clear error, and free memory."""
        ...


@dataclass(frozen=True)
class EmbeddingResult:
    """One embedding per input, in order, the tokens consumed and how many inputs were cut."""

    vectors: list[list[float]]
    prompt_tokens: int
    truncated: int = 0


@runtime_checkable
class EmbeddingModel(LoadedModel, Protocol):
    """A loaded model that serves ``/v1/embeddings``."""

    @property
    def vocab_size(self) -> int:
        """Token ids an input may use are in ``[0, vocab_size)`` (see ``skills.limits``)."""
        ...

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> EmbeddingResult:
        """Embed each input (text or token ids); inputs are micro-batched with other callers."""
        ...


@dataclass(frozen=True)
class LabelScore:
    """One label and its probability."""

    label: str
    score: float


@dataclass(frozen=True)
class ClassificationResult:
    """Labels with scores (highest first) per input, in order, and the tokens consumed."""

    items: list[list[LabelScore]]
    prompt_tokens: int
    truncated: int = 0


@runtime_checkable
class ClassificationModel(LoadedModel, Protocol):
    """A loaded model that serves ``/v1/classifications``."""

    async def classify(self, inputs: Sequence[str]) -> ClassificationResult:
        """Classify each input; inputs are micro-batched with other callers."""
        ...


@dataclass(frozen=True)
class GenerationRequest:
    """One generation with its own sampling parameters.

    ``temperature == 0`` means greedy. ``seed`` makes sampling reproducible.
    ``stop`` sequences end generation and are not included in the output text.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of generated output: new text/tokens since the previous chunk.

    The last chunk has ``finish_reason`` set; token counts are cumulative.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class GenerationModel(LoadedModel, Protocol):
    """A loaded causal LM that serves chat and completions."""

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text for ``messages`` via the tokenizer's chat template."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (as the model will see it)."""
        ...

    @property
    def vocab_size(self) -> int:
        """Prompt token ids must be in ``[0, vocab_size)`` (see ``skills.limits``)."""
        ...

    @property
    def active_generations(self) -> int:
        """Generations currently being decoded or queued."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the generation; closing/cancelling the iterator cancels the request."""
        ...


@runtime_checkable
class Skill(Protocol):
    """Loads one kind of model. Third parties register skills under ``hfserve.skills``."""

    info: SkillInfo

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> LoadedModel:
        """Load ``model_path`` onto ``device`` in ``dtype`` (blocking; runs in a worker thread).

        ``dtype`` is already resolved (``float32``, ``float16`` or ``bfloat16``, never ``auto``):
        ``hardware.choose_device`` is the one dtype policy.
        """
        ...
