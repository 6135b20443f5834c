"""A batched ``model.generate`` engine, for models continuous batching cannot run.

transformers' continuous batching (``GenerationEngine``) takes token ids only: its
``add_request`` has no place for ``pixel_values`` or other model inputs, so image-text-to-text
models decode here instead. Requests that arrive while a batch runs wait and form the next
one; requests are batched together when their extra inputs can be concatenated (same keys,
same shapes past the first dimension), left-padded to one length.

Per-request behaviour inside one ``generate`` call comes from two hooks transformers offers:

- a logits processor applies each row's own temperature, top_p and seeded ``torch.Generator``
  (greedy rows are left alone, so argmax equals ``do_sample=False``) and masks EOS until
  ``min_tokens``;
- a stopping criterion sees each new token first: it hands it to the request's stream, decides
  the row's end (EOS unless ``ignore_eos``, its own ``max_new_tokens``, or a cancel) and returns
  the per-row finished flags, so ``generate`` stops once every row is done.

``generate`` is told no EOS of its own, so the criterion alone decides. It runs in a worker
thread; tokens reach the event loop with one ``call_soon_threadsafe`` per step.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hfserve.errors import InferenceError, InvalidRequestError, OverloadedError, ShuttingDownError
from hfserve.skills.base import FinishReason, GenerationRequest, RuntimeOptions
from hfserve.skills.generation.engine import EngineStats, QueueTokenStream, TokenEvent

if TYPE_CHECKING:
    import torch

__all__ = ["BatchedGenerateEngine", "BatchedTokenStream"]

logger = logging.getLogger(__name__)
_RETRY_AFTER = 1.0


@dataclass(eq=False)
class _Row:
    """One request: its inputs, sampling state and where its events go."""

    request: GenerationRequest
    signature: tuple[Any, ...]
    queue: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    generator: torch.Generator | None = None
    seed: int = 0
    produced: int = 0
    finished: bool = False
    cancelled: bool = False


class BatchedTokenStream(QueueTokenStream):
    """The token events of one submitted request; closing it drops the request from the queue
    or its batch."""

    def __init__(self, engine: BatchedGenerateEngine, row: _Row) -> None:
        super().__init__(row.queue, len(row.request.prompt_ids), lambda: engine.cancel(row))


def _signature(media: Mapping[str, Any] | None, prompt_len: int) -> tuple[Any, ...]:
    """What must match for two requests to share a batch: keys, dtypes, shapes past dim 0."""
    import torch

    if not media:
        return ()
    parts: list[Any] = []
    for key in sorted(media):
        value = media[key]
        if not isinstance(value, torch.Tensor):
            return (object(),)  # not concatenable: a batch of its own
        if value.dim() == 2 and value.shape == (1, prompt_len):
            parts.append((key, "per-token", value.dtype))
        else:
            parts.append((key, tuple(value.shape[1:]), value.dtype))
    return tuple(parts)


class BatchedGenerateEngine:
    """Batches concurrent generations into ``model.generate`` calls, each row sampled its way.

    Args:
        model: a loaded transformers model with ``generate``.
        eos_token_ids: the ids that end a generation unless a request sets ``ignore_eos``.
        pad_token_id: the id left padding uses.
        options: batch size (``max_concurrent_generations``) and admission (``max_queue``).
        max_context: the longest prompt + generation the model accepts (tokens).
        vocab_size: prompt ids must lie in ``[0, vocab_size)``.
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Iterable[int],
        pad_token_id: int,
        options: RuntimeOptions,
        max_context: int,
        vocab_size: int,
    ) -> None:
        self._model = model
        self._eos_ids = tuple(sorted({int(i) for i in eos_token_ids if int(i) >= 0}))
        self._pad = pad_token_id
        self._batch_size = options.max_concurrent_generations
        self._capacity = options.max_concurrent_generations + options.max_queue
        self._max_context = max_context
        self._vocab_size = vocab_size
        self._waiting: collections.deque[_Row] = collections.deque()
        self._running: list[_Row] = []
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._current: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self.stats = EngineStats()

    @property
    def active(self) -> int:
        """Requests being decoded or waiting for the next batch."""
        return len(self._waiting) + sum(not row.finished for row in self._running)

    def memory_bytes(self) -> int:
        """0: the KV cache lives only while a ``generate`` call runs."""
        return 0

    async def start(self) -> None:
        """Start the batching task."""
        if self._worker is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="hfserve-batched-generate")

    def _check(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if not all(0 <= i < self._vocab_size for i in request.prompt_ids):
            raise InvalidRequestError(
                f"prompt token ids must be in [0, {self._vocab_size})", param="prompt"
            )
        if request.max_new_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
        if len(request.prompt_ids) + request.max_new_tokens > self._max_context:
            raise InvalidRequestError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.max_new_tokens})"
                f" exceeds the model's context of {self._max_context} tokens",
                param="max_tokens",
            )
        if request.temperature < 0 or not 0 < request.top_p <= 1:
            raise InvalidRequestError("temperature must be >= 0 and top_p in (0, 1]")

    def submit(self, request: GenerationRequest) -> BatchedTokenStream:
        """Queue a generation for the next batch; its tokens arrive on the returned stream.

        Raises:
            InvalidRequestError: empty prompt, bad parameters or longer than the context.
            OverloadedError: ``max_concurrent_generations + max_queue`` requests are in flight.
            ShuttingDownError: the engine is not running.
        """
        if self._worker is None or self._closing:
            raise ShuttingDownError("the generation engine is not running")
        self._check(request)
        if self.active >= self._capacity:
            raise OverloadedError(
                f"{self.active} generations in flight; try again shortly", retry_after=_RETRY_AFTER
            )
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        row = _Row(request, _signature(request.media, len(request.prompt_ids)), seed=seed)
        self._waiting.append(row)
        self._wakeup.set()
        self.stats.submitted += 1
        return BatchedTokenStream(self, row)

    def cancel(self, row: _Row) -> None:
        """Drop a queued request, or end a running one before the next decoding step."""
        if row.finished:
            return
        row.finished = row.cancelled = True
        self.stats.cancelled += 1
        if row in self._waiting:
            self._waiting.remove(row)

    def _next_batch(self) -> list[_Row]:
        """The oldest waiting request and the compatible ones behind it, up to the batch size."""
        first = self._waiting[0]
        batch = [r for r in self._waiting if r.signature == first.signature][: self._batch_size]
        for row in batch:
            self._waiting.remove(row)
        return batch

    async def _run(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._running = self._next_batch()
            self._current = asyncio.ensure_future(asyncio.to_thread(self._generate, self._running))
            try:
                await self._current
            except Exception as exc:
                logger.exception("batched generation failed")
                error = InferenceError(f"generation failed: {type(exc).__name__}: {exc}")
                self._fail(self._running, error)
            finally:
                self._running = []
                self._current = None

    def _fail(self, rows: Iterable[_Row], error: BaseException) -> None:
        for row in rows:
            if not row.finished:
                row.finished = True
                self.stats.failed += 1
                row.queue.put_nowait(error)

    def _generate(self, rows: list[_Row]) -> None:
        """One ``generate`` call over ``rows`` (blocking; runs in a worker thread)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        inputs = self._collate(rows)
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=False,
            max_new_tokens=max(r.request.max_new_tokens for r in rows),
            pad_token_id=self._pad,
            # Empty, not None: None is filled in from the model's generation config, and then
            # generate() would end (and pad) an ``ignore_eos`` row at EOS on its own.
            eos_token_id=[],
        )
        with torch.inference_mode():
            self._model.generate(
                **inputs,
                generation_config=config,
                logits_processor=LogitsProcessorList([_build_sampler(rows, self._eos_ids)]),
                stopping_criteria=StoppingCriteriaList([_build_stopper(rows, self)]),
            )
        # Every row ends through the stopper; should generate() stop first for a reason of its
        # own (max_length in the model's config), its rows must still end rather than hang.
        unfinished = [r for r in rows if not r.finished]
        for row in unfinished:
            row.finished = True
        self.post([(row, TokenEvent([], "length")) for row in unfinished])

    def _collate(self, rows: list[_Row]) -> dict[str, Any]:
        """Left-padded ids and mask, and the rows' extra inputs concatenated along dim 0."""
        import torch

        device = self._model.device
        length = max(len(r.request.prompt_ids) for r in rows)
        ids = torch.full((len(rows), length), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            prompt = row.request.prompt_ids
            ids[i, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, length - len(prompt) :] = 1
        out: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        media = [dict(r.request.media or {}) for r in rows]
        for key in media[0]:
            values = [m[key] for m in media]
            if not isinstance(values[0], torch.Tensor):
                out[key] = values[0]  # a batch of one (see _signature)
                continue
            if values[0].dim() == 2 and values[0].shape == (1, len(rows[0].request.prompt_ids)):
                # Aligned with the tokens (token type ids): padded like them.
                values = [torch.nn.functional.pad(v, (length - v.shape[1], 0)) for v in values]
            merged = torch.cat(values)
            if merged.is_floating_point():
                merged = merged.to(self._model.dtype)
            out[key] = merged.to(device)
        return out

    def _deliver(self, events: list[tuple[_Row, TokenEvent]]) -> None:
        """Runs on the event loop: put each row's new event on its queue."""
        for row, event in events:
            if not row.cancelled:
                row.queue.put_nowait(event)
                if event.finish_reason is not None:
                    self.stats.completed += 1

    def post(self, events: list[tuple[_Row, TokenEvent]]) -> None:
        """Hand events from the generate thread to the event loop."""
        if events and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._deliver, events)
            except RuntimeError:  # pragma: no cover - the loop closed; nobody is listening
                logger.debug("event loop closed; dropping %d generation events", len(events))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The ids that end a generation."""
        return self._eos_ids

    async def aclose(self) -> None:
        """Fail waiting and running requests with ``ShuttingDownError`` and stop the task."""
        if self._worker is None or self._closing:
            return
        self._closing = True
        error = ShuttingDownError("the model is being unloaded; retry")
        running = list(self._running)
        self._fail([*self._waiting, *running], error)
        self._waiting.clear()
        worker, self._worker = self._worker, None
        if self._current is not None:
            # Every row is finished now, so a running generate() ends at its next step; wait
            # for it, so the model is not freed under the thread.
            await asyncio.wait([self._current])
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        self._model = None


def _sample_row(scores: torch.Tensor, row: _Row) -> int:
    """One token id from a row of logits with the request's temperature, top_p and RNG."""
    import torch

    request = row.request
    logits = scores.float() / request.temperature
    if request.top_p < 1.0:
        # transformers' TopPLogitsWarper rule: drop the low tail whose mass is <= 1 - top_p.
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1.0 - request.top_p)
        remove[-1] = False
        logits = logits.masked_fill(remove.scatter(0, sorted_idx, remove), -math.inf)
    if row.generator is None:
        row.generator = torch.Generator(device=scores.device)
        row.generator.manual_seed(row.seed)
    return int(torch.multinomial(logits.softmax(dim=-1), 1, generator=row.generator).item())


def _build_sampler(rows: list[_Row], eos_ids: tuple[int, ...]) -> Any:
    """The per-row sampling logits processor (a transformers ``LogitsProcessor``)."""
    from transformers import LogitsProcessor

    class _Sampler(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            out = scores
            for i, row in enumerate(rows):
                request = row.request
                suppress = (
                    bool(eos_ids) and not request.ignore_eos and row.produced < request.min_tokens
                )
                if row.finished or (request.temperature <= 0.0 and not suppress):
                    continue
                if out is scores:
                    out = scores.clone()
                if suppress:
                    out[i, list(eos_ids)] = -math.inf
                if request.temperature > 0.0:
                    token = _sample_row(out[i], row)
                    out[i].fill_(-math.inf)
                    out[i, token] = 0.0
            return out

    return _Sampler()


def _build_stopper(rows: list[_Row], engine: BatchedGenerateEngine) -> Any:
    """The stopping criterion that streams each row's tokens and ends each row on its own."""
    import torch
    from transformers import StoppingCriteria

    eos = set(engine.eos_ids)

    class _Stopper(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            last: list[int] = input_ids[:, -1].tolist()
            events: list[tuple[_Row, TokenEvent]] = []
            for row, token in zip(rows, last, strict=True):
                if row.finished:
                    continue
                request = row.request
                row.produced += 1
                reason: FinishReason | None = None
                tokens = [token]
                if not request.ignore_eos and token in eos:
                    reason, tokens = "stop", []
                elif row.produced >= request.max_new_tokens:
                    reason = "length"
                if reason is not None:
                    row.finished = True
                events.append((row, TokenEvent(tokens, reason)))
            engine.post(events)
            return torch.tensor(
                [r.finished for r in rows], dtype=torch.bool, device=input_ids.device
            )

    return _Stopper()
