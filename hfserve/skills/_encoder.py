"""What the encoder skills (embeddings, classification) share: tokenizing with honest
truncation, padding, micro-batching through a ``MicroBatcher``, memory accounting and freeing.

Imported only when such a model is loaded (it imports torch).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from hfserve.core.batcher import MicroBatcher
from hfserve.errors import InferenceError, InvalidRequestError, ShuttingDownError
from hfserve.skills._torch import free_memory, module_memory_bytes
from hfserve.skills.base import (
    ClassificationResult,
    EmbeddingResult,
    LabelScore,
    RuntimeOptions,
    SkillInfo,
)
from hfserve.skills.limits import check_token_ids, declared_limit
from hfserve.skills.pooling import PoolingConfig

__all__ = [
    "EncodedInputs",
    "EncoderClassificationModel",
    "EncoderEmbeddingModel",
    "EncoderModel",
    "load_encoder",
    "max_input_length",
    "pool",
    "special_token_frame",
]

R = TypeVar("R")
M = TypeVar("M", bound="EncoderModel[Any]")
log = logging.getLogger("hfserve.skills")

# Requests whose text inputs total at most this many characters are tokenized on the event
# loop; longer ones in a worker thread, so a huge input never blocks other requests.
_INLINE_TOKENIZE_CHARS = 2048


@dataclass(frozen=True)
class EncodedInputs:
    """Token ids per input (specials included), how many tokens they hold, how many were cut."""

    ids: list[list[int]]
    tokens: int
    truncated: int


def max_input_length(tokenizer: Any, config: Any, declared: int | None = None) -> int:
    """The longest input in tokens: ``declared`` (sentence-transformers) or the tighter of the
    tokenizer's and the position table's limits."""
    # sentence-transformers' max_seq_length wins, but never past what the model can embed.
    model_limit = declared_limit(
        getattr(tokenizer, "model_max_length", None),
        getattr(config, "max_position_embeddings", None),
    )
    return declared_limit(declared, model_limit) or 512


def load_encoder(
    model_class: type[M],
    auto_class: Any,
    source: str,
    *,
    device: str,
    dtype: str,
    options: RuntimeOptions,
    max_seq_length: int | None = None,
    **kwargs: Any,
) -> M:
    """Load ``source``'s tokenizer and ``auto_class`` model onto ``device`` in ``dtype``, in eval
    mode, as a ``model_class`` (blocking): the load both encoder skills share.

    Args:
        model_class: ``EncoderEmbeddingModel`` or ``EncoderClassificationModel``.
        auto_class: the transformers ``Auto*`` class that builds the model.
        source: the folder (or Hub id) holding the weights and tokenizer.
        device: where the model runs.
        dtype: a resolved dtype name (``float32``, ``float16``, ``bfloat16``).
        options: the runtime options; ``trust_remote_code`` applies to both loads.
        max_seq_length: a declared input limit (sentence-transformers' ``max_seq_length``).
        kwargs: the rest of ``model_class``'s arguments (``info``, ``model_id``, ...).
    """
    from transformers import AutoTokenizer

    from hfserve.skills._torch import torch_dtype

    trust = options.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    model = auto_class.from_pretrained(source, dtype=torch_dtype(dtype), trust_remote_code=trust)
    model.to(device)
    model.eval()
    return model_class(
        device=device,
        dtype=dtype,
        model=model,
        tokenizer=tokenizer,
        max_length=max_input_length(tokenizer, model.config, max_seq_length),
        options=options,
        **kwargs,
    )


def special_token_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence.

    Found by tokenizing a probe with and without specials, so token-id inputs get exactly the
    framing that text inputs get (``[CLS] ... [SEP]``, ``<s> ... </s>``, nothing for GPT-2).
    """
    bare: list[int] = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full: list[int] = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    # A post-processor that rewrites the content itself: frame nothing rather than guess.
    return [], []


class EncoderModel(ABC, Generic[R]):
    """A transformers encoder served through a ``MicroBatcher``: one item per input."""

    def __init__(
        self,
        *,
        info: SkillInfo,
        model_id: str,
        device: str,
        dtype: str,
        model: Any,
        tokenizer: Any,
        max_length: int,
        options: RuntimeOptions,
        lowercase: bool = False,
    ) -> None:
        self.info = info
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self._model = model
        # No one-thread pacing of small forwards (``_threads.py``): the batcher's thread is
        # this model's only OpenMP pool, and two threads beat one from one sentence up.
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._options = options
        self._lowercase = lowercase
        self._prefix, self._suffix = special_token_frame(tokenizer)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self._pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self._batcher: MicroBatcher[list[int], R] | None = None
        self._memory = module_memory_bytes(model)

    @property
    def max_input_tokens(self) -> int:
        """The longest input in tokens; longer inputs are truncated to it."""
        return self._max_length

    @property
    def vocab_size(self) -> int:
        """Token ids an input may use are in ``[0, vocab_size)``: the tokenizer's full vocabulary."""
        return len(self._tokenizer)

    def memory_bytes(self) -> int:
        """Bytes of parameters and buffers."""
        return self._memory

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for ``text`` (special tokens included, before truncation)."""
        content = self._tokenizer(self._prepare_text(text), add_special_tokens=False)["input_ids"]
        return len(self._prefix) + len(content) + len(self._suffix)

    async def start(self) -> None:
        """Start the micro-batcher."""
        if self._batcher is not None:
            return
        opts = self._options
        self._batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=opts.max_batch_size,
            max_batch_tokens=opts.max_batch_tokens,
            max_wait_ms=opts.max_wait_ms,
            max_queue=opts.max_queue,
            cost_fn=len,
            name=self.model_id,
            observer=opts.batch_observer,
        )
        await self._batcher.start()

    async def aclose(self) -> None:
        """Stop the batcher (failing queued work), drop the weights and free their memory."""
        if self._batcher is not None:
            await self._batcher.aclose()
        self._model = None
        free_memory(self.device)

    @property
    def queue_depth(self) -> int:
        """Inputs waiting for a batch (for the ``hfserve_queue_depth`` gauge)."""
        return self._batcher.queue_depth if self._batcher is not None else 0

    async def _submit_all(
        self, inputs: Sequence[str | Sequence[int]]
    ) -> tuple[list[R], EncodedInputs]:
        """Tokenize off the loop, then submit every input and gather results in order."""
        if self._batcher is None or self._model is None:
            raise ShuttingDownError(f"model {self.model_id!r} is not running (unloaded or closing)")
        if not inputs:
            raise InvalidRequestError("at least one input is required", param="input")
        if _input_chars(inputs) <= _INLINE_TOKENIZE_CHARS:
            # A short input tokenizes in tens of microseconds: less than the hop to a worker
            # thread, whose GIL hand-offs would also stall the model thread under load.
            encoded = self.encode_inputs(inputs)
        else:
            encoded = await asyncio.to_thread(self.encode_inputs, inputs)
        batcher = self._batcher
        # All or nothing: a full queue refuses the whole request rather than half of it.
        results = await batcher.submit_many(encoded.ids)
        return results, encoded

    def encode_inputs(self, inputs: Sequence[str | Sequence[int]]) -> EncodedInputs:
        """Token ids (specials added, truncated to ``max_input_tokens``) for each input.

        Raises:
            InvalidRequestError: an input is neither text nor a list of valid token ids.
        """
        room = max(1, self._max_length - len(self._prefix) - len(self._suffix))
        vocab = self.vocab_size
        ids: list[list[int]] = []
        truncated = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                content = self._tokenizer(self._prepare_text(item), add_special_tokens=False)[
                    "input_ids"
                ]
            else:
                content = list(item)
                check_token_ids(content, vocab, param="input", where=f"input {index}: ")
            if len(content) > room:
                truncated += 1
                content = content[:room]
            ids.append([*self._prefix, *content, *self._suffix])
        return EncodedInputs(ids=ids, tokens=sum(len(x) for x in ids), truncated=truncated)

    def _prepare_text(self, text: str) -> str:
        return text.lower() if self._lowercase else text

    def _pad(self, batch: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input ids and attention mask on the model's device, padded on the tokenizer's side."""
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            span = slice(width - len(ids), width) if self._pad_left else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            mask[row, span] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _run_batch(self, batch: Sequence[list[int]]) -> list[R | BaseException]:
        """Run one padded batch (in the batcher's worker thread); a failing input fails alone."""
        try:
            return list(self._run_padded(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [self._inference_error(exc)]
        # One input the model chokes on must not fail the other callers that shared its batch:
        # rerun each input alone so only the culprit's caller gets the error.
        out: list[R | BaseException] = []
        for ids in batch:
            try:
                out.append(self._run_padded([ids])[0])
            except Exception as exc:
                out.append(self._inference_error(exc))
        return out

    def _run_padded(self, batch: Sequence[list[int]]) -> list[R]:
        input_ids, mask = self._pad(batch)
        with torch.inference_mode():
            return self._forward(input_ids, mask)

    def _inference_error(self, exc: Exception) -> InferenceError:
        # The traceback goes to the log; the client gets the model and the exception class only,
        # never internals such as tensor contents or file paths.
        log.error("model %r failed on an input", self.model_id, exc_info=exc)
        return InferenceError(
            f"model {self.model_id!r} failed on this input ({type(exc).__name__}); "
            "other requests are unaffected"
        )

    @abstractmethod
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[R]:
        """Compute one result per row of the padded batch."""


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) under ``mask`` (batch, seq) per mode, concatenated."""
    dtype = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    weights = mask.unsqueeze(-1).to(dtype)
    values = hidden.to(dtype)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    outputs: list[torch.Tensor] = []
    for mode in modes:
        if mode == "cls":
            outputs.append(values[:, 0])
        elif mode == "max":
            outputs.append(values.masked_fill(weights == 0, -1e9).max(dim=1).values)
        elif mode == "mean":
            outputs.append((values * weights).sum(dim=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            outputs.append((values * weights).sum(dim=1) / counts.sqrt())
        elif mode == "weightedmean":
            positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=dtype)
            position_weights = weights * positions.view(1, -1, 1)
            total = position_weights.sum(dim=1).clamp(min=1e-9)
            outputs.append((values * position_weights).sum(dim=1) / total)
        elif mode == "lasttoken":
            # The last attended position, whichever side the padding is on.
            positions = torch.arange(mask.shape[1], device=mask.device)
            last = (mask * positions).argmax(dim=1)
            outputs.append(values[torch.arange(values.shape[0], device=mask.device), last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(outputs, dim=-1)


class EncoderEmbeddingModel(EncoderModel[list[float]]):
    """A loaded encoder serving ``embed`` (satisfies ``EmbeddingModel``)."""

    def __init__(self, *, pooling: PoolingConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pooling = pooling

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> EmbeddingResult:
        """One vector per input, micro-batched with other callers."""
        vectors, encoded = await self._submit_all(inputs)
        return EmbeddingResult(
            vectors=vectors, prompt_tokens=encoded.tokens, truncated=encoded.truncated
        )

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[float]]:
        out = self._model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = pool(out.last_hidden_state, attention_mask, self.pooling.modes)
        if self.pooling.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        vectors: list[list[float]] = pooled.float().cpu().tolist()
        return vectors


class EncoderClassificationModel(EncoderModel[list[LabelScore]]):
    """A loaded sequence classifier serving ``classify`` (satisfies ``ClassificationModel``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self._model.config
        count = int(config.num_labels)
        id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
        self.labels = [id2label.get(i, f"LABEL_{i}") for i in range(count)]
        # Multi-label heads score each label independently; single-label heads share a softmax.
        self.multi_label = config.problem_type == "multi_label_classification"

    async def classify(self, inputs: Sequence[str]) -> ClassificationResult:
        """Every label with its probability (highest first) per input, micro-batched."""
        items, encoded = await self._submit_all(inputs)
        return ClassificationResult(
            items=items, prompt_tokens=encoded.tokens, truncated=encoded.truncated
        )

    def _forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> list[list[LabelScore]]:
        logits = self._model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        rows: list[list[LabelScore]] = []
        for row in probs.cpu().tolist():
            scores = [
                LabelScore(label, float(p)) for label, p in zip(self.labels, row, strict=True)
            ]
            rows.append(sorted(scores, key=lambda s: s.score, reverse=True))
        return rows


def _input_chars(inputs: Sequence[str | Sequence[int]]) -> int:
    """Characters of text a request asks to tokenize (token-id inputs count their length)."""
    return sum(len(item) for item in inputs)
