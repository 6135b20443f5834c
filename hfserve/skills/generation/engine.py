"""The generation engine: transformers' continuous batching with per-request sampling.

Many concurrent generations share each decoding step through transformers'
``ContinuousBatchingManager`` (``model.init_continuous_batching()``): its scheduler admits and
evicts requests between steps, its paged KV cache holds them, and its background thread runs
the model. This module adds what a server needs around it: an asyncio API, bounded admission,
cancellation and shutdown, and - the part transformers does not do - sampling parameters that
belong to each request.

Why our own sampling stage. The installed continuous batching samples with one global policy:
``do_sample`` comes from the manager's ``GenerationConfig`` and ``torch.multinomial`` draws from
one global RNG, so neither greedy-next-to-sampled nor a per-request ``seed`` is possible, and
it has no penalties, logit bias, grammar masks or top logprobs. So the manager is configured
greedy (argmax) and given one logits processor of ours, ``_Sampler``, through transformers' own
per-request channel (``logit_processor_kwargs``: each request carries its engine slot). The
processor hands the step's whole logits tensor to :class:`~.stage.SamplingStage`, which picks
every row's token at once with that row's parameters (see :mod:`.sampling`) and returns a row
that is 0 at the chosen token and -inf elsewhere, so transformers' argmax takes our choice.

``max_new_tokens`` and ``ignore_eos`` are per-request arguments of ``add_request`` already;
stop *strings* are text, so the skill handles them and cancels the request on a match.

Accelerators: the stage has no host sync or Python branch inside the step there, so
transformers may capture the step in CUDA graphs again (not yet measured on a GPU). Async double
buffering stays off: a grammar's mask for step N+1 needs step N's token on the host.

A request that finds the engine idle decodes on the batch-1 path of :mod:`.solo` instead, and
joins continuous batching the moment a second request arrives (``options.solo_decode``, the
``solo_decode`` setting, turns that path off).

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
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
from hfserve.skills.generation.solo import SoloOutput, SoloRun, SoloUnsupportedError, decode_solo
from hfserve.skills.generation.stage import (
    SamplingStage,
    SlotStep,
    StepLogprobs,
    check_sampling,
    params_of,
)

if TYPE_CHECKING:
    import torch

__all__ = ["EngineStats", "GenerationEngine", "TokenEvent", "TokenStream", "logits_width"]

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
    ``logprobs`` (when the request asked for them) has one entry per token of ``token_ids``.
    """

    token_ids: list[int]
    finish_reason: FinishReason | None = None
    logprobs: list[StepLogprobs] | None = None


@dataclass
class EngineStats:
    """Counters of the engine's work, for metrics and tests."""

    submitted: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    sampled_rows: int = 0
    rows_after_cancel: int = 0


def logits_width(model: Any) -> int:
    """Columns of a causal LM's logits: its output embedding's rows (can exceed the vocab)."""
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.get_text_config().vocab_size)  # pragma: no cover - no LM head


def _build_processor(stage: SamplingStage, stats: EngineStats) -> Any:
    """Our sampling stage as transformers' per-request logits processor (built lazily).

    This and :func:`_build_router` are the two places that know transformers' continuous
    batching internals: a processor sees each step's logits with one int32 argument per row
    (here the request's table row), and the router sees each step's outputs.
    """
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class _Sampler(ContinuousBatchingLogitsProcessor):
        """Hands the step's logits to the sampling stage; see the module docstring."""

        supported_kwargs: dict[str, type] = {_SLOT_KWARG: int}  # noqa: RUF012 - base API
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            # Padding rows of a step point at the table's no-op row.
            int32_tensor.fill_(stage.table.dummy)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            slots = [
                r.state.logit_processor_kwargs.get(_SLOT_KWARG, -1) for r in requests_with_new_token
            ]
            rows = stage.prepare(slots)
            stats.sampled_rows = stage.sampled_rows
            stats.rows_after_cancel = stage.rows_after_cancel
            return rows

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            return stage.run(scores, tensor_arg)

    return _Sampler()


def _build_router(
    loop: asyncio.AbstractEventLoop,
    deliver: Callable[[list[Any], Any], None],
    collect: Callable[[list[Any]], Any],
) -> Any:
    """An ``OutputRouter`` that hands each batch of outputs to the event loop in one call.

    ``collect`` runs first, on the manager thread, right after the step that made the outputs
    (the sampling stage reads that step's logprobs and advances grammars there, before the next
    step is planned); its result travels to ``deliver`` with the outputs.
    """
    from transformers.generation.continuous_batching.continuous_api import OutputRouter

    class _LoopRouter(OutputRouter):
        """Routes every output of the manager thread to the engine, on its event loop."""

        def deliver(self, output: Any) -> None:
            self.deliver_batch([output])

        def deliver_batch(self, outputs: list[Any]) -> None:
            if not outputs:
                return
            extra = collect(outputs)
            try:
                loop.call_soon_threadsafe(deliver, list(outputs), extra)
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
    logprobs: list[StepLogprobs] | None = None


class QueueTokenStream:
    """Token events read from a queue until one carries a finish reason (or an error arrives);
    closing the stream before that calls ``cancel``. Both engines hand these out."""

    def __init__(
        self,
        queue: asyncio.Queue[TokenEvent | BaseException],
        prompt_tokens: int,
        cancel: Callable[[], None],
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self._queue = queue
        self._cancel = cancel
        self._done = False

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    async def aclose(self) -> None:
        """Stop listening; an unfinished request is cancelled."""
        if not self._done:
            self._done = True
            self._cancel()


class TokenStream(QueueTokenStream):
    """The token events of one submitted request; closing it cancels the request."""

    def __init__(
        self, engine: GenerationEngine, request_id: str, entry: _Entry, prompt_tokens: int
    ):
        super().__init__(entry.queue, prompt_tokens, lambda: engine.cancel(request_id))
        self.request_id = request_id


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
        self._stage: SamplingStage | None = None
        self._slots = itertools.count()
        self._closing = False
        self.stats = EngineStats()
        # The batch-1 path (see :mod:`.solo`): the run on it, and the lock that the solo
        # thread holds while it uses the sampling stage, so a handover never overlaps that.
        self._solo_enabled = options.solo_decode
        self._solo: SoloRun | None = None
        self._solo_lock = threading.Lock()
        self._solo_executor: ThreadPoolExecutor | None = None
        self._solo_done: asyncio.Future[None] | None = None

    @property
    def active(self) -> int:
        """Requests being decoded or waiting for a place in the batch."""
        return len(self._entries)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end a generation (unless a request sets ``ignore_eos``)."""
        return self._eos_ids

    @property
    def running(self) -> bool:
        """Whether the engine accepts work."""
        return self._manager is not None and not self._closing

    def memory_bytes(self) -> int:
        """Bytes of the paged KV cache's tensors (0 before the manager thread allocates them)."""
        import torch

        stage = self._stage.memory_bytes() if self._stage is not None else 0
        cache = getattr(getattr(self._manager, "batch_processor", None), "cache", None)
        if cache is None:
            return stage
        # The cache's layout changes across transformers versions (one byte tensor, or
        # per-layer key/value lists), so count every tensor it holds, each storage once.
        seen: set[int] = set()
        total = 0
        for value in vars(cache).values():
            for tensor in value if isinstance(value, list | tuple) else (value,):
                if isinstance(tensor, torch.Tensor) and tensor.data_ptr() not in seen:
                    seen.add(tensor.data_ptr())
                    total += tensor.numel() * tensor.element_size()
        return total + stage

    def _cb_config(self) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        kind = "cpu" if self._model.device.type == "cpu" else "accelerator"
        kwargs: dict[str, Any] = {
            "max_requests_per_batch": self._options.max_concurrent_generations,
            # The sampling stage is graph-safe on accelerators (static shapes, persistent
            # buffers, no host sync inside the step), so transformers decides on CUDA graphs
            # there; they do nothing on CPU. Not yet measured on a GPU.
            "use_cuda_graph": None if kind == "accelerator" else False,
            # Async batching plans step N+1 before step N's tokens reach the host, but a
            # grammar's mask for N+1 needs token N, and logprobs are read per step: off.
            "use_async_batching": False,
            "default_compile_level": 0,
            # Vocabulary-sized temporaries of the sampler need headroom (transformers' own
            # figure for "there is logits processing").
            "max_memory_percent": 0.8,
        }
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
        self._stage = SamplingStage(
            rows=self._capacity,
            vocab_size=logits_width(self._model),
            device=self._model.device,
            eos_ids=self._eos_ids,
            static=self._model.device.type != "cpu",
        )
        processors = ContinuousBatchingLogitsProcessorList(
            LogitsProcessorList([_build_processor(self._stage, self.stats)])
        )
        # One int32 row of per-request arguments: the slot (counted by transformers only for
        # processors it converts itself).
        processors.tensors_required = 1
        manager.logit_processor = processors
        manager.output_router = _build_router(loop, self._on_outputs, self._collect_step)
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
        stream = self.submit(probe, solo=False)
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
        # Bias ids index the logits, which can be narrower or wider than the input vocabulary.
        check_sampling(request, self._stage.vocab_size if self._stage else self._vocab_size)

    def submit(self, request: GenerationRequest, *, solo: bool = True) -> TokenStream:
        """Queue a generation; its tokens arrive on the returned stream.

        A request that finds the engine idle decodes on the batch-1 path unless ``solo`` is
        False (the start-up probe, which checks continuous batching itself).

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
        assert self._stage is not None  # set with the manager
        self._stage.register(slot, params_of(request, seed), request.prompt_ids, request.grammar)
        entry = _Entry(
            slot=slot,
            ignore_eos=request.ignore_eos,
            logprobs=[] if request.logprobs is not None else None,
        )
        stop_ids = () if request.ignore_eos else self._eos_ids
        kwargs: dict[str, Any] = {
            "request_id": request_id,
            "max_new_tokens": request.max_new_tokens,
            "streaming": True,
            "eos_token_id": list(stop_ids) or -1,
            _SLOT_KWARG: slot,
        }
        alone = solo and self._solo_enabled and not self._entries and self._manager_idle()
        # Registered before add_request: the first output may arrive on the next loop turn.
        self._entries[request_id] = entry
        if alone:
            run = SoloRun(
                request_id,
                slot,
                list(request.prompt_ids),
                request.max_new_tokens,
                frozenset(stop_ids),
                kwargs,
            )
            self._start_solo(run)
        else:
            self._hand_over()
            self._add(list(request.prompt_ids), kwargs)
        self.stats.submitted += 1
        return TokenStream(self, request_id, entry, len(request.prompt_ids))

    def _add(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> None:
        """Hand a request to continuous batching (raises when its thread died)."""
        manager = self._manager
        if manager.add_request(prompt_ids, **kwargs) is None:
            # The manager refuses work only once its thread is stopping: it died, since our
            # own shutdown is refused in ``submit``.
            self._forget(kwargs["request_id"])
            fatal = manager.background_thread_status.fatal_error
            raise InferenceError(f"the generation engine stopped: {fatal or 'thread exiting'}")

    def _manager_idle(self) -> bool:
        """Continuous batching holds no request and its thread is alive (a cancelled request
        can stay scheduled until the manager's next step)."""
        manager = self._manager
        processor = getattr(manager, "batch_processor", None)
        return (
            processor is not None
            and manager.is_running()
            and manager.input_queue.empty()
            and not processor.has_pending_requests()
        )

    # -- the batch-1 path (see :mod:`.solo`) -------------------------------------------------

    def _start_solo(self, run: SoloRun) -> None:
        loop = self._loop
        assert loop is not None  # set by start()
        if self._solo_executor is None:
            self._solo_executor = ThreadPoolExecutor(1, thread_name_prefix="hfserve-solo")
        with self._solo_lock:
            self._solo = run
        self._solo_done = loop.run_in_executor(self._solo_executor, self._solo_main, run)

    def _hand_over(self) -> None:
        """A second request arrived: the solo run continues in continuous batching, now.

        The solo thread's step in flight is dropped: it uses the stage only under the lock,
        and finds the run handed over when it gets there.
        """
        with self._solo_lock:
            run = self._solo
            if run is None:
                return
            self._solo = None
            run.handoff = True
            tokens = list(run.tokens)
        self._resume(run, tokens)

    def _resume(self, run: SoloRun, tokens: list[int]) -> None:
        """Add a solo run to continuous batching: its prompt and ``tokens`` (those delivered)
        as the prompt, with the tokens it may still make (any thread)."""
        # After the solo outputs already posted, before the manager's first one.
        self._post(self._rebase, run.request_id)
        kwargs = dict(run.cb_kwargs)
        kwargs["max_new_tokens"] = run.max_new_tokens - len(tokens)
        if self._manager.add_request(run.prompt_ids + tokens, **kwargs) is None:
            self._post(self._fail, run.request_id)

    def _solo_main(self, run: SoloRun) -> None:
        """The solo thread: decode ``run`` until it ends or is handed over."""
        stage, model = self._stage, self._model
        assert stage is not None  # set with the manager; aclose waits for this thread
        try:
            decode_solo(model, stage, run, self._solo_lock, self._emit_solo, self._count)
        except SoloUnsupportedError as exc:
            # Continuous batching runs this model its own way: let it take over, for good.
            logger.warning("batch-1 decoding is off for this model: %s", exc)
            self._solo_enabled = False
            with self._solo_lock:
                mine = self._solo is run
                if mine:
                    self._solo = None
            if mine:
                self._resume(run, list(run.tokens))
        except Exception as exc:
            logger.exception("batch-1 decoding failed")
            with self._solo_lock:
                if self._solo is run:
                    self._solo = None
                    error = f"{type(exc).__name__}: {exc}"
                    self._post(self._on_outputs, [SoloOutput(run.request_id, [], True, error)], {})

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # pragma: no cover - the loop closed; nobody is listening
            logger.debug("event loop closed; dropping a batch-1 decoding event")

    def _emit_solo(self, output: SoloOutput, steps: dict[int, SlotStep]) -> None:
        # Called under the lock, with the run still ours.
        if output.finished:
            self._solo = None
        self._post(self._on_outputs, [output], steps)

    def _count(self, stage: SamplingStage) -> None:
        self.stats.sampled_rows = stage.sampled_rows
        self.stats.rows_after_cancel = stage.rows_after_cancel

    def _rebase(self, request_id: str) -> None:
        """The request continues in continuous batching, whose token count starts again."""
        entry = self._entries.get(request_id)
        if entry is not None:
            entry.delivered = 0

    def _fail(self, request_id: str) -> None:
        """The manager refused a handed-over request: its thread died."""
        entry = self._forget(request_id)
        if entry is None:
            return
        self.stats.failed += 1
        fatal = self._manager.background_thread_status.fatal_error if self._manager else None
        entry.queue.put_nowait(
            InferenceError(f"the generation engine stopped: {fatal or 'thread exiting'}")
        )

    def cancel(self, request_id: str) -> None:
        """Stop a request: it leaves the batch before the next decoding step."""
        entry = self._forget(request_id)
        if entry is None:
            return
        self.stats.cancelled += 1
        with self._solo_lock:
            run = self._solo
            if run is not None and run.request_id == request_id:
                run.cancelled = True
                self._solo = None
                return
        self._manager.cancel_request(request_id)

    def _forget(self, request_id: str) -> _Entry | None:
        entry = self._entries.pop(request_id, None)
        if entry is not None and self._stage is not None:
            self._stage.forget(entry.slot)
        return entry

    def _collect_step(self, outputs: list[Any]) -> dict[int, SlotStep]:
        """On the manager thread, after a step: logprobs and grammar progress per slot."""
        if self._stage is None:  # pragma: no cover - outputs only flow while the manager runs
            return {}
        new_tokens = {
            _slot_of(o.request_id): int(o.generated_tokens[-1])
            for o in outputs
            if o.error is None and o.generated_tokens
        }
        return self._stage.collect(new_tokens)

    def _on_outputs(self, outputs: list[Any], steps: dict[int, SlotStep]) -> None:
        """Runs on the event loop: turn manager outputs into token events."""
        for output in outputs:
            entry = self._entries.get(output.request_id)
            if entry is None:
                continue  # cancelled or failed already
            step = steps.get(entry.slot)
            error = output.error
            if error is None and step is not None and step.grammar_error is not None:
                error = f"the output left its grammar: {step.grammar_error}"
                self._manager.cancel_request(output.request_id)
            if error is not None:
                self._forget(output.request_id)
                self.stats.failed += 1
                entry.queue.put_nowait(InferenceError(f"generation failed: {error}"))
                continue
            tokens = list(output.generated_tokens)
            new = tokens[entry.delivered :]
            entry.delivered = len(tokens)
            if entry.logprobs is not None and step is not None and step.logprobs is not None:
                entry.logprobs.append(step.logprobs)
            grammar_done = step is not None and step.grammar_done
            if not output.is_finished() and not grammar_done:
                entry.queue.put_nowait(TokenEvent(new, None, _take(entry, len(new))))
                continue
            self._forget(output.request_id)
            self.stats.completed += 1
            reason: FinishReason = "length"
            if grammar_done and not output.is_finished():
                # The grammar is complete and allows nothing more: end here, not one step later.
                self._manager.cancel_request(output.request_id)
                reason = "stop"
            if tokens and not entry.ignore_eos and tokens[-1] in self._eos_ids:
                reason = "stop"
                new = new[:-1]
            elif grammar_done:
                reason = "stop"
            entry.queue.put_nowait(TokenEvent(new, reason, _take(entry, len(new))))

    async def aclose(self) -> None:
        """Fail in-flight requests with ``ShuttingDownError``, stop the thread, free the cache."""
        if self._manager is None or self._closing:
            return
        self._closing = True
        manager = self._manager
        with self._solo_lock:
            if self._solo is not None:
                self._solo.cancelled = True
                self._solo = None
        for request_id, entry in list(self._entries.items()):
            self._forget(request_id)
            manager.cancel_request(request_id)
            entry.queue.put_nowait(ShuttingDownError("the model is being unloaded; retry"))
        try:
            if self._solo_done is not None:
                await self._solo_done  # at most the step in flight
            if self._solo_executor is not None:
                self._solo_executor.shutdown(wait=True)
            await asyncio.to_thread(manager.stop, block=True, hard_stop=True)
            await asyncio.to_thread(manager.destroy)
        finally:
            # Drop every reference to the model and cache so the caller can free the memory.
            self._manager = None
            self._model = None
            self._stage = None
            self._solo_executor = None
            self._solo_done = None


def _slot_of(request_id: str) -> int:
    """The engine slot in a request id ``hfs-<slot>``."""
    return int(request_id.rpartition("-")[2])


def _take(entry: _Entry, n: int) -> list[StepLogprobs] | None:
    """The logprobs of the next ``n`` delivered tokens (a dropped EOS leaves its one behind)."""
    if entry.logprobs is None:
        return None
    out, entry.logprobs = entry.logprobs[:n], []
    return out
