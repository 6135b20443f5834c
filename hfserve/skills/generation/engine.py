"""The generation engine: transformers' continuous batching with per-request sampling.

Many concurrent generations share each decoding step through transformers'
``ContinuousBatchingManager`` (``model.init_continuous_batching()``): its scheduler admits and
evicts requests between steps, its paged KV cache holds them, and its background thread runs
the model. This module adds what a server needs around it: an asyncio API, bounded admission,
cancellation and shutdown, and - the part transformers does not do - sampling parameters that
belong to each request.

Why a custom sampler. The installed continuous batching samples with one global policy:
``do_sample`` comes from the manager's ``GenerationConfig`` (transformers' own server takes it,
with temperature and top_p, from the first request), and ``torch.multinomial`` draws from one
global RNG, so neither greedy-next-to-sampled nor a per-request ``seed`` is possible. Its
per-request logits processors (temperature, top-k, top-p) exist, but not per-request seeds,
greedy rows next to sampled rows, or a minimum length. So the manager is configured greedy
(argmax) and given one logits processor of ours, :class:`_Sampler`, through transformers'
own per-request channel (``logit_processor_kwargs``: each request carries its engine slot).
For every row of a step the sampler looks up that request's parameters and:

- greedy request (``temperature == 0``): leaves the logits alone, so argmax equals
  ``model.generate(do_sample=False)``;
- sampled request: applies its temperature and top_p, draws with *its own* seeded
  ``torch.Generator``, and hands argmax a one-hot row - the same seed gives the same tokens
  whatever else shares the batch;
- ``min_tokens``: masks the EOS ids until the request has produced that many tokens.

``max_new_tokens`` and ``ignore_eos`` are per-request arguments of ``add_request`` already;
stop *strings* are text, so the skill handles them and cancels the request on a match.

The sampler runs Python per step, so accelerator graphs, ``torch.compile`` and async double
buffering are switched off (they would replay a captured step without it). That costs peak
throughput on GPUs and is the price of correct per-request sampling.

Threads: the manager thread hands every batch of outputs to the event loop with one
``loop.call_soon_threadsafe``; nothing polls. A cancelled request is removed from the
scheduler before its next step (``stats.rows_after_cancel`` counts the at most one step
already in flight).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hfserve.errors import (
    InferenceError,
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
    ShuttingDownError,
)
from hfserve.skills.base import FinishReason, GenerationRequest, RuntimeOptions

if TYPE_CHECKING:
    import torch

__all__ = ["EngineStats", "GenerationEngine", "TokenEvent", "TokenStream"]

logger = logging.getLogger(__name__)

# The per-request kwarg that carries a request's engine slot to the sampler.
_SLOT_KWARG = "hfserve_slot"
# Left alone, transformers sizes the KV cache to 80-90% of free device memory (of *system* RAM on
# CPU), which starves every other model in the cache. Size it from the concurrency instead:
# each generation gets up to this much context (longer ones share the pool, which the scheduler
# manages by waiting and requeueing). ``extra["continuous_batching"]`` overrides it.
_CONTEXT_PER_GENERATION = {"cpu": 4096, "accelerator": 8192}
# Prefill chunk per step: the attention mask grows with batch tokens x cache tokens.
_MAX_BATCH_TOKENS = {"cpu": 512, "accelerator": 2048}
_PAGE_SIZE = 256
_RETRY_AFTER = 1.0


@dataclass(frozen=True)
class TokenEvent:
    """New token ids of one request since its previous event; the last one has a finish reason.

    A generation that ends on EOS reports ``"stop"`` and the EOS token is not included.
    """

    token_ids: list[int]
    finish_reason: FinishReason | None = None


@dataclass
class EngineStats:
    """Counters of the engine's work, for metrics and tests."""

    submitted: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    sampled_rows: int = 0
    rows_after_cancel: int = 0


@dataclass
class _SamplingState:
    """One request's sampling parameters and progress, read by the manager thread."""

    temperature: float
    top_p: float
    seed: int
    min_tokens: int
    eos_ids: tuple[int, ...]
    generator: torch.Generator | None = None
    produced: int = 0


def _sample_row(scores: torch.Tensor, state: _SamplingState) -> int:
    """Draw one token id from a row of logits with the request's temperature, top_p and RNG."""
    import torch

    # float32: half-precision rows make sort/softmax/multinomial slow on GPUs and less exact.
    logits = scores.float() / state.temperature
    if state.top_p < 1.0:
        # Same rule as transformers' TopPLogitsWarper: drop the low tail whose mass is <= 1-top_p.
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1.0 - state.top_p)
        remove[-1] = False
        logits = logits.masked_fill(remove.scatter(0, sorted_idx, remove), -math.inf)
    if state.generator is None:
        state.generator = torch.Generator(device=scores.device)
        state.generator.manual_seed(state.seed)
    probs = logits.softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=state.generator).item())


def _build_sampler(states: Mapping[int, _SamplingState], stats: EngineStats) -> Any:
    """The per-request logits processor (a transformers CB processor, built lazily)."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class _Sampler(ContinuousBatchingLogitsProcessor):
        """Applies each row's own sampling parameters; see the module docstring."""

        supported_kwargs: dict[str, type] = {_SLOT_KWARG: int}  # noqa: RUF012 - base API
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(-1)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            slots = [
                r.state.logit_processor_kwargs.get(_SLOT_KWARG, -1) for r in requests_with_new_token
            ]
            return torch.tensor(slots, dtype=torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            slots: list[int] = tensor_arg[: scores.size(0)].tolist()
            out = scores
            for row, slot in enumerate(slots):
                state = states.get(slot)
                if state is None:
                    # A request the engine no longer tracks: cancelled after this step was planned.
                    stats.rows_after_cancel += 1
                    continue
                stats.sampled_rows += 1
                suppress_eos = state.produced < state.min_tokens and state.eos_ids
                state.produced += 1
                if not suppress_eos and state.temperature <= 0.0:
                    continue
                if out is scores:
                    out = scores.clone()
                if suppress_eos:
                    out[row, list(state.eos_ids)] = -math.inf
                if state.temperature > 0.0:
                    token = _sample_row(out[row], state)
                    out[row].fill_(-math.inf)
                    out[row, token] = 0.0
            return out

    return _Sampler()


def _build_router(loop: asyncio.AbstractEventLoop, deliver: Callable[[list[Any]], None]) -> Any:
    """An ``OutputRouter`` that hands each batch of outputs to the event loop in one call."""
    from transformers.generation.continuous_batching.continuous_api import OutputRouter

    class _LoopRouter(OutputRouter):
        """Routes every output of the manager thread to the engine, on its event loop."""

        def deliver(self, output: Any) -> None:
            self.deliver_batch([output])

        def deliver_batch(self, outputs: list[Any]) -> None:
            if not outputs:
                return
            try:
                loop.call_soon_threadsafe(deliver, list(outputs))
            except RuntimeError:  # pragma: no cover - the loop closed; nobody is listening
                logger.debug("event loop closed; dropping %d generation outputs", len(outputs))

    return _LoopRouter()


@dataclass
class _Entry:
    """A request the engine is serving: where its events go and how far it has got."""

    slot: int
    queue: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    delivered: int = 0
    ignore_eos: bool = False


class TokenStream:
    """The token events of one submitted request; closing it cancels the request."""

    def __init__(
        self, engine: GenerationEngine, request_id: str, entry: _Entry, prompt_tokens: int
    ):
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._engine = engine
        self._entry = entry
        self._done = False

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._entry.queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    async def aclose(self) -> None:
        """Stop listening; an unfinished request is cancelled in the engine."""
        if not self._done:
            self._done = True
            self._engine.cancel(self.request_id)


class GenerationEngine:
    """Continuous batching over one causal LM, with each request's own sampling parameters.

    Args:
        model: a loaded transformers causal LM (``init_continuous_batching`` support).
        eos_token_ids: the ids that end a generation unless a request sets ``ignore_eos``.
        options: concurrency (``max_concurrent_generations``) and admission (``max_queue``);
            ``options.extra["continuous_batching"]`` overrides ``ContinuousBatchingConfig`` fields.
        max_context: the longest prompt + generation the model accepts (tokens).
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Iterable[int],
        options: RuntimeOptions,
        max_context: int,
    ) -> None:
        self._model = model
        self._eos_ids = tuple(sorted({int(i) for i in eos_token_ids if int(i) >= 0}))
        self._options = options
        self._max_context = max_context
        self._vocab_size = 0
        self._capacity = options.max_concurrent_generations + options.max_queue
        self._manager: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entries: dict[str, _Entry] = {}
        self._states: dict[int, _SamplingState] = {}
        self._slots = itertools.count()
        self._closing = False
        self.stats = EngineStats()

    @property
    def active(self) -> int:
        """Requests being decoded or waiting for a place in the batch."""
        return len(self._entries)

    @property
    def running(self) -> bool:
        """Whether the engine accepts work."""
        return self._manager is not None and not self._closing

    def memory_bytes(self) -> int:
        """Bytes of the paged KV cache's tensors (0 before the manager thread allocates them)."""
        import torch

        cache = getattr(getattr(self._manager, "batch_processor", None), "cache", None)
        if cache is None:
            return 0
        # The cache's layout changes across transformers versions (one byte tensor, or
        # per-layer key/value lists), so count every tensor it holds, each storage once.
        seen: set[int] = set()
        total = 0
        for value in vars(cache).values():
            for tensor in value if isinstance(value, list | tuple) else (value,):
                if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in seen:
                    seen.add(tensor.data_ptr())
                    total += tensor.numel() * tensor.element_size()
        return total

    def _cb_config(self) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        kwargs: dict[str, Any] = {
            "max_requests_per_batch": self._options.max_concurrent_generations,
            # The sampler runs Python each step: no graph replay, compile or double buffering.
            "use_cuda_graph": False,
            "use_async_batching": False,
            "default_compile_level": 0,
            # Vocabulary-sized temporaries of the sampler need headroom (transformers' own
            # figure for "there is logits processing").
            "max_memory_percent": 0.8,
        }
        kind = "cpu" if self._model.device.type == "cpu" else "accelerator"
        per_generation = min(self._max_context, _CONTEXT_PER_GENERATION[kind])
        # ... and the pool always holds one generation of the full context, or the scheduler
        # could never place it.
        total = max(self._max_context, self._options.max_concurrent_generations * per_generation)
        # ``block_size`` was renamed ``page_size`` after transformers 5.17.
        names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
        kwargs["page_size" if "page_size" in names else "block_size"] = _PAGE_SIZE
        kwargs["num_blocks"] = max(1, math.ceil(total / _PAGE_SIZE))
        kwargs["max_batch_tokens"] = _MAX_BATCH_TOKENS[kind]
        kwargs.update(self._options.extra.get("continuous_batching", {}))
        return ContinuousBatchingConfig(**kwargs)

    def _create_manager(self, loop: asyncio.AbstractEventLoop) -> Any:
        """Build and start the transformers manager (blocking; runs in a worker thread)."""
        from transformers import GenerationConfig
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )
        from transformers.generation.logits_process import LogitsProcessorList

        if not hasattr(self._model, "init_continuous_batching"):
            raise ModelLoadError(
                f"{type(self._model).__name__} does not support transformers' continuous batching"
            )
        self._vocab_size = int(self._model.get_input_embeddings().num_embeddings)
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            do_sample=False, eos_token_id=list(self._eos_ids) or -1, max_new_tokens=16
        )
        try:
            manager = self._model.init_continuous_batching(
                generation_config=config, continuous_batching_config=self._cb_config()
            )
        except (ValueError, TypeError, NotImplementedError, AttributeError) as exc:
            raise ModelLoadError(
                f"continuous batching is not available for {type(self._model).__name__}: {exc}"
            ) from exc
        processors = ContinuousBatchingLogitsProcessorList(
            LogitsProcessorList([_build_sampler(self._states, self.stats)])
        )
        # One int32 row of per-request arguments: the slot (counted by transformers only for
        # processors it converts itself).
        processors.tensors_required = 1
        manager.logit_processor = processors
        manager.output_router = _build_router(loop, self._on_outputs)
        manager.start()
        return manager

    async def start(self) -> None:
        """Start the manager thread and run one token through it, so a model that cannot be
        continuously batched fails here, loudly, rather than on its first request.

        Raises:
            ModelLoadError: continuous batching does not work for this model.
        """
        if self._manager is not None:
            return
        if self._model is None:
            raise ModelLoadError("this generation engine was closed; load the model again")
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._manager = await asyncio.to_thread(self._create_manager, self._loop)
        probe = GenerationRequest(
            prompt_ids=[self._eos_ids[0] if self._eos_ids else 0], max_new_tokens=1
        )
        stream = self.submit(probe)
        try:
            async for _ in stream:
                pass
        except InferenceError as exc:
            await self.aclose()
            raise ModelLoadError(
                f"continuous batching failed on {type(self._model).__name__}: {exc}"
            ) from exc

    def _check_request(self, request: GenerationRequest) -> None:
        if not request.prompt_ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if not all(0 <= i < self._vocab_size for i in request.prompt_ids):
            # An out-of-range id would crash the shared decoding step for every request.
            raise InvalidRequestError(
                f"prompt token ids must be in [0, {self._vocab_size})", param="prompt"
            )
        if request.max_new_tokens < 1:
            raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self._max_context:
            raise InvalidRequestError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.max_new_tokens})"
                f" exceeds the model's context of {self._max_context} tokens",
                param="max_tokens",
            )
        if request.temperature < 0 or not 0 < request.top_p <= 1:
            raise InvalidRequestError("temperature must be >= 0 and top_p in (0, 1]")

    def submit(self, request: GenerationRequest) -> TokenStream:
        """Queue a generation; its tokens arrive on the returned stream.

        Raises:
            InvalidRequestError: empty prompt, bad parameters or longer than the context.
            OverloadedError: ``max_concurrent_generations + max_queue`` requests are in flight.
            ShuttingDownError: the engine is not running.
            InferenceError: the manager thread died.
        """
        manager = self._manager
        if manager is None or self._closing:
            raise ShuttingDownError("the generation engine is not running")
        self._check_request(request)
        if len(self._entries) >= self._capacity:
            raise OverloadedError(
                f"{len(self._entries)} generations in flight; try again shortly",
                retry_after=_RETRY_AFTER,
            )
        slot = next(self._slots)
        request_id = f"hfs-{slot}"
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        self._states[slot] = _SamplingState(
            temperature=request.temperature,
            top_p=request.top_p,
            seed=seed,
            min_tokens=0 if request.ignore_eos else request.min_tokens,
            eos_ids=self._eos_ids,
        )
        entry = _Entry(slot=slot, ignore_eos=request.ignore_eos)
        # Registered before add_request: the first output may arrive on the next loop turn.
        self._entries[request_id] = entry
        added = manager.add_request(
            list(request.prompt_ids),
            request_id=request_id,
            max_new_tokens=request.max_new_tokens,
            streaming=True,
            eos_token_id=-1 if request.ignore_eos or not self._eos_ids else list(self._eos_ids),
            **{_SLOT_KWARG: slot},
        )
        if added is None:
            # The manager refuses work only once its thread is stopping: it died, since our
            # own shutdown is refused above.
            self._forget(request_id)
            fatal = manager.background_thread_status.fatal_error
            raise InferenceError(f"the generation engine stopped: {fatal or 'thread exiting'}")
        self.stats.submitted += 1
        return TokenStream(self, request_id, entry, len(request.prompt_ids))

    def cancel(self, request_id: str) -> None:
        """Stop a request: it leaves the batch before the next decoding step."""
        entry = self._forget(request_id)
        if entry is None:
            return
        self.stats.cancelled += 1
        self._manager.cancel_request(request_id)

    def _forget(self, request_id: str) -> _Entry | None:
        entry = self._entries.pop(request_id, None)
        if entry is not None:
            self._states.pop(entry.slot, None)
        return entry

    def _on_outputs(self, outputs: list[Any]) -> None:
        """Runs on the event loop: turn manager outputs into token events."""
        for output in outputs:
            entry = self._entries.get(output.request_id)
            if entry is None:
                continue  # cancelled or failed already
            if output.error is not None:
                self._forget(output.request_id)
                self.stats.failed += 1
                entry.queue.put_nowait(InferenceError(f"generation failed: {output.error}"))
                continue
            tokens = list(output.generated_tokens)
            new = tokens[entry.delivered :]
            entry.delivered = len(tokens)
            if not output.is_finished():
                entry.queue.put_nowait(TokenEvent(new))
                continue
            self._forget(output.request_id)
            self.stats.completed += 1
            reason: FinishReason = "length"
            if tokens and not entry.ignore_eos and tokens[-1] in self._eos_ids:
                reason = "stop"
                new = new[:-1]
            entry.queue.put_nowait(TokenEvent(new, reason))

    async def aclose(self) -> None:
        """Fail in-flight requests with ``ShuttingDownError``, stop the thread, free the cache."""
        if self._manager is None or self._closing:
            return
        self._closing = True
        manager = self._manager
        for request_id, entry in list(self._entries.items()):
            self._forget(request_id)
            manager.cancel_request(request_id)
            entry.queue.put_nowait(ShuttingDownError("the model is being unloaded; retry"))
        try:
            await asyncio.to_thread(manager.stop, block=True, hard_stop=True)
            await asyncio.to_thread(manager.destroy)
        finally:
            # Drop every reference to the model and cache so the caller can free the memory.
            self._manager = None
            self._model = None
