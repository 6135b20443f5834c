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
    "TASK_IMAGE_TEXT_TO_TEXT",
    "TASK_RERANK",
    "TASK_SPEECH_TO_TEXT",
    "ClassificationModel",
    "ClassificationResult",
    "EmbeddingModel",
    "EmbeddingResult",
    "GenerationChunk",
    "GenerationModel",
    "GenerationRequest",
    "Grammar",
    "LabelScore",
    "LoadedModel",
    "MultimodalGenerationModel",
    "PreparedPrompt",
    "RerankModel",
    "RuntimeOptions",
    "ScoreResult",
    "Skill",
    "SkillInfo",
    "StructuredGenerationModel",
    "TokenLogprob",
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
TASK_IMAGE_TEXT_TO_TEXT = "image-text-to-text"

FinishReason = Literal["stop", "length"]


class Grammar(Protocol):
    """A compiled output grammar; each generation gets its own matcher."""

    def matcher(self) -> Any:
        """A fresh ``llguidance.LLMatcher`` at the start of the grammar."""
        ...


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
    # Generations on the CPU decode on the padded direct path, not continuous batching
    # (``generation/direct.py``).
    direct_decode: bool = True
    trust_remote_code: bool = False
    batch_observer: BatchObserver | None = None
    # A chat template (Jinja source) that replaces the model's own (``--chat-template``).
    chat_template: str | None = None
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

    ``temperature == 0`` means greedy. ``seed`` makes sampling reproducible, whatever else
    shares the batch. ``stop`` sequences end generation and are not included in the output text.
    ``top_k == 0`` and ``min_p == 0`` turn those filters off. ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's, over the generated tokens) and ``repetition_penalty``
    (transformers', over prompt and generated tokens; 1 is off) change the logits before
    sampling; ``logit_bias`` maps token ids to values added to their logits.
    ``logprobs``: None for none, ``n >= 0`` for the chosen token's logprob and the ``n`` most
    likely tokens with theirs (``n <= 20``). ``grammar``: an ``llguidance.LLMatcher`` owned by
    this request (fresh, not shared); every token is chosen from what it allows, and the
    generation ends with ``"stop"`` once the grammar is complete.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    grammar: Any | None = None
    # Model inputs besides the token ids (pixel values, image sizes) from
    # ``MultimodalGenerationModel.prepare_chat``; only that model's ``generate`` reads them.
    media: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A token with its logprob and, for a generated token, the most likely tokens (best first).

    ``token`` is the token's text as decoded alone (a piece of a multi-byte character decodes to
    U+FFFD; ``token_bytes`` keeps its real bytes where the tokenizer exposes them).
    """

    token_id: int
    token: str
    token_bytes: bytes
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of generated output: new text/tokens since the previous chunk.

    The last chunk has ``finish_reason`` set; token counts are cumulative. ``logprobs``, when
    the request asked for them, has one entry per token of ``token_ids``.
    """

    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


@runtime_checkable
class GenerationModel(LoadedModel, Protocol):
    """A loaded causal LM that serves chat and completions."""

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt text for ``messages`` (and ``tools``) via the tokenizer's chat template."""
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


@dataclass(frozen=True)
class PreparedPrompt:
    """A chat rendered by a multimodal processor: token ids (image tokens expanded) and the
    extra model inputs (``pixel_values`` ...) that go with them."""

    prompt_ids: list[int]
    media: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class MultimodalGenerationModel(GenerationModel, Protocol):
    """A generation model that also reads images in chat messages."""

    def prepare_chat(
        self, messages: Sequence[Mapping[str, Any]], images: Sequence[Any]
    ) -> PreparedPrompt:
        """Render ``messages`` (content parts ``{"type": "image"}`` in order of ``images``,
        Pillow images) into prompt ids and model inputs (blocking: run it off the loop)."""
        ...


@runtime_checkable
class StructuredGenerationModel(GenerationModel, Protocol):
    """A generation model that can constrain its output (JSON schemas, tool calls)."""

    tool_format: str

    async def compile_grammar(self, schema: Mapping[str, Any], *, param: str) -> Grammar:
        """The compiled grammar of a JSON schema (``param``: the request field, for errors)."""
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
