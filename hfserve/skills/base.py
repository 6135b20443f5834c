"""The skill contract: metadata, the loaded-model protocols the server calls, and options.

A *skill* knows how to load and run one kind of model. ``Skill.load`` returns a
``LoadedModel``; depending on the skill's task it also satisfies ``EmbeddingModel``,
``ClassificationModel``, ``RerankModel``, ``TranscriptionModel`` or ``GenerationModel``, which
is what the server talks to.
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
    "TASK_RERANK",
    "TASK_SPEECH_TO_TEXT",
    "ClassificationModel",
    "ClassificationResult",
    "EmbeddingModel",
    "EmbeddingResult",
    "GenerationChunk",
    "GenerationModel",
    "GenerationRequest",
    "LabelScore",
    "LoadedModel",
    "RerankModel",
    "RuntimeOptions",
    "ScoreResult",
    "Skill",
    "SkillInfo",
    "TranscriptSegment",
    "Transcription",
    "TranscriptionModel",
    "TranscriptionOptions",
]

TASK_GENERATION = "text-generation"
TASK_EMBEDDINGS = "embeddings"
TASK_CLASSIFICATION = "text-classification"
TASK_RERANK = "rerank"
TASK_SPEECH_TO_TEXT = "speech-to-text"

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SkillInfo:
    """What a skill handles and serves; shown by ``hfserve skills``."""

    name: str
    task: str
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    # Only models whose head has exactly this many labels (a cross-encoder has one); such a
    # skill wins over one without the constraint for the same architecture.
    num_labels: int | None = None
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
            "num_labels": self.num_labels,
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
        """The longest input (in tokens) the model accepts."""
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
class ScoreResult:
    """One relevance score per (query, document) pair, in order, and the tokens consumed."""

    scores: list[float]
    prompt_tokens: int
    truncated: int = 0


@runtime_checkable
class RerankModel(LoadedModel, Protocol):
    """A loaded cross-encoder that serves ``/v1/rerank`` and ``/v1/score``."""

    async def score(self, pairs: Sequence[tuple[str, str]]) -> ScoreResult:
        """Score each (query, document) pair; pairs are micro-batched with other callers."""
        ...


@dataclass(frozen=True)
class TranscriptionOptions:
    """How to transcribe: ``task`` is ``transcribe`` or ``translate`` (to English)."""

    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    max_seconds: float = 1800.0


@dataclass(frozen=True)
class TranscriptSegment:
    """A stretch of the audio and its text; times in seconds from the start of the file."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Transcription:
    """The text of an audio file, its segments, its duration and the tokens generated."""

    text: str
    segments: list[TranscriptSegment]
    duration: float
    language: str | None
    tokens: int


@runtime_checkable
class TranscriptionModel(LoadedModel, Protocol):
    """A loaded speech recognition model serving ``/v1/audio/transcriptions`` (and
    ``/v1/audio/translations`` when ``can_translate``)."""

    @property
    def can_translate(self) -> bool:
        """Whether the model translates speech to English text (Whisper does, CTC does not)."""
        ...

    async def transcribe(self, audio: bytes, options: TranscriptionOptions) -> Transcription:
        """Decode ``audio`` (any format PyAV reads), window it and transcribe each window.

        Raises:
            InvalidRequestError: not audio, too long, or options the model cannot honour.
        """
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
        """Load ``model_path`` onto ``device`` in ``dtype`` (blocking; runs in a worker thread)."""
        ...
