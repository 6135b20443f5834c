"""The generation engine: batched decoding with per-request sampling, on two paths.

On the CPU, generations decode on the direct path of :mod:`.direct`: the model's own forward
over one left-padded ``DynamicCache``, which requests join and leave between steps, on one
decoding thread. For the small models a CPU serves, that is 1.3-1.5x the tokens per second of
transformers' continuous batching (see :mod:`.direct` for the measurements), and a lone request
is as fast as plain ``generate``. ``options.direct_decode`` (the ``direct_decode`` setting) turns
it off.

Elsewhere, and for a model whose forward refuses a padded batch, transformers' continuous
batching runs: ``ContinuousBatchingManager`` (``model.init_continuous_batching()``), whose
scheduler admits and evicts requests between steps, whose paged KV cache holds them and whose
background thread runs the model. It starts only when needed: on the CPU its thread would be
a second one running OpenMP regions, which slows both (see :meth:`GenerationEngine.start`). A
model that moves there takes its runs along: each continues as its prompt plus the tokens it
has delivered, with the tokens it may still make.

This module adds what a server needs around both: an asyncio API, bounded admission,
cancellation and shutdown, and - the part transformers does not do - sampling parameters that
belong to each request.

Why our own sampling stage. The installed continuous batching samples with one global policy:
``do_sample`` comes from the manager's ``GenerationConfig`` and ``torch.multinomial`` draws from
one global RNG, so neither greedy-next-to-sampled nor a per-request ``seed`` is possible, and
it has no penalties, logit bias, grammar masks or top logprobs. So the manager is configured
greedy (argmax) and given one logits processor of ours (:mod:`.paged`), through transformers' own
per-request channel (``logit_processor_kwargs``: each request carries its engine slot). The
processor hands the step's whole logits tensor to :class:`~.stage.SamplingStage`, which picks
every row's token at once with that row's parameters (see :mod:`.sampling`) and returns a row
that is 0 at the chosen token and -inf elsewhere, so transformers' argmax takes our choice.
The direct path calls the same stage on its own logits.

``max_new_tokens`` and ``ignore_eos`` are per-request arguments of ``add_request`` already;
stop *strings* are text, so the skill handles them and cancels the request on a match.

Accelerators: the stage has no host sync or Python branch inside the step there, so
transformers may capture the step in CUDA graphs again (not yet measured on a GPU). Async double
buffering stays off: a grammar's mask for step N+1 needs step N's token on the host.

Threads: the decoding thread and the manager thread hand every step's outputs to the event
loop with one ``loop.call_soon_threadsafe``; nothing polls. A cancelled request leaves before
its next step (``stats.rows_after_cancel`` counts the at most one step already in flight).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hfserve.errors import (
    InferenceError,
    InvalidRequestError,
    ModelLoadError,
    OverloadedError,
    ShuttingDownError,
)
from hfserve.skills.base import FinishReason, GenerationRequest, RuntimeOptions
from hfserve.skills.generation.direct import (
    DirectDecoder,
    DirectOutput,
    DirectRun,
    DirectUnsupportedError,
)
from hfserve.skills.generation.paged import SLOT_KWARG, build_router, start_manager
from hfserve.skills.generation.stage import (
    SamplingStage,
    SlotStep,
    StepLogprobs,
    check_sampling,
    params_of,
)

__all__ = ["EngineStats", "GenerationEngine", "TokenEvent", "TokenStream", "logits_width"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

_RETRY_AFTER = 1.0
# Prompt tokens (padding included) prefilled in one forward on the direct path: 16 prompts of
# 128 tokens at once, a longer one alone.
_DIRECT_PREFILL_TOKENS = 2048


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
    """Batched decoding of one causal LM, with each request's own sampling parameters.

    Args:
        model: a loaded transformers causal LM.
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
        # The direct path (see :mod:`.direct`): its decoder, and the lock its thread holds
        # while it uses the sampling stage, which admission, cancelling and a move to
        # continuous batching take too.
        self._direct_enabled = (
            options.direct_decode
            and getattr(model, "device", None) is not None
            and model.device.type == "cpu"
        )
        self._direct: DirectDecoder | None = None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._direct_done: asyncio.Future[None] | None = None
        # Why continuous batching is not running when it was needed (it failed to start).
        self._no_manager = "continuous batching is not running"

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
        return self._stage is not None and not self._closing

    def memory_bytes(self) -> int:
        """Bytes of the paged KV cache's tensors (0 before the manager thread allocates them)."""
        import torch

        stage = self._stage.memory_bytes() if self._stage is not None else 0
        if self._direct is not None:
            stage += self._direct.nbytes()
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

    def _create_manager(self, loop: asyncio.AbstractEventLoop, stage: SamplingStage) -> Any:
        """Build and start transformers' manager (blocking; never on the event loop)."""
        return start_manager(
            self._model,
            stage,
            eos_ids=self._eos_ids,
            options=self._options,
            max_context=self._max_context,
            router=build_router(loop, self._on_outputs, self._collect_step),
            on_prepare=self._count,
        )

    async def start(self) -> None:
        """Run one token through the engine, so a model it cannot run fails here, loudly,
        rather than on its first request.

        On the direct path that token decodes there, and continuous batching starts only if
        the model needs it: its manager thread would be a second thread running OpenMP
        regions, and with more OpenMP threads than CPUs libgomp stops spinning between
        regions (a batch-1 step went from 9 ms to 15 on 2 vCPUs, 2026-12-02).

        Raises:
            ModelLoadError: neither path can run this model.
        """
        if self._stage is not None:
            return
        if self._model is None:
            raise ModelLoadError("this generation engine was closed; load the model again")
        if not callable(getattr(self._model, "get_input_embeddings", None)):
            raise ModelLoadError(f"{type(self._model).__name__} is not a transformers causal LM")
        self._loop = loop = asyncio.get_running_loop()
        self._closing = False
        self._vocab_size = int(self._model.get_input_embeddings().num_embeddings)
        # The stage's tables are filled by torch, in parallel: on the thread that will decode
        # (direct), or on a thread that then exits (continuous batching runs its own).
        # Either way no other thread keeps an OpenMP pool (see ``start``'s docstring).
        if self._direct_enabled:
            stage = await loop.run_in_executor(self._decode_executor(), self._build_stage)
            self._stage = stage
            self._direct = DirectDecoder(
                self._model,
                stage,
                self._lock,
                self._emit_direct,
                self._count,
                max_rows=self._options.max_concurrent_generations,
                prefill_tokens=_DIRECT_PREFILL_TOKENS,
            )
        else:

            def setup() -> tuple[SamplingStage, Any]:
                stage = self._build_stage()
                return stage, self._create_manager(loop, stage)

            self._stage, self._manager = await _in_own_thread(loop, setup)
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
                f"generation failed on {type(self._model).__name__}: {exc}"
            ) from exc

    def _build_stage(self) -> SamplingStage:
        return SamplingStage(
            rows=self._capacity,
            vocab_size=logits_width(self._model),
            device=self._model.device,
            eos_ids=self._eos_ids,
            static=self._model.device.type != "cpu",
        )

    def _decode_executor(self) -> ThreadPoolExecutor:
        """The direct path's one thread (every torch call of that path runs on it)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="hfserve-decode")
        return self._executor

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

    def submit(self, request: GenerationRequest) -> TokenStream:
        """Queue a generation; its tokens arrive on the returned stream (on the direct path
        while that is on, else in continuous batching).

        Raises:
            InvalidRequestError: empty prompt, bad parameters or longer than the context.
            OverloadedError: ``max_concurrent_generations + max_queue`` requests are in flight.
            ShuttingDownError: the engine is not running.
            InferenceError: the manager thread died.
        """
        if not self.running:
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
            SLOT_KWARG: slot,
        }
        # Registered before the request is queued: the first output may arrive on the next
        # loop turn.
        self._entries[request_id] = entry
        run = DirectRun(
            request_id,
            slot,
            list(request.prompt_ids),
            request.max_new_tokens,
            frozenset(stop_ids),
            kwargs,
        )
        if not self._enqueue_direct(run):
            self._add(list(request.prompt_ids), kwargs)
        self.stats.submitted += 1
        return TokenStream(self, request_id, entry, len(request.prompt_ids))

    def _add(self, prompt_ids: list[int], kwargs: dict[str, Any]) -> None:
        """Hand a request to continuous batching (raises when its thread died)."""
        manager = self._manager
        if manager is None or manager.add_request(prompt_ids, **kwargs) is None:
            # The manager refuses work only once its thread is stopping: it died, since our
            # own shutdown is refused in ``submit``.
            self._forget(kwargs["request_id"])
            raise InferenceError(f"the generation engine stopped: {self._fatal_error()}")

    def _fatal_error(self) -> str:
        manager = self._manager
        if manager is None:
            return self._no_manager
        return str(manager.background_thread_status.fatal_error or "thread exiting")

    # -- the direct path (see :mod:`.direct`) ------------------------------------------------

    def _enqueue_direct(self, run: DirectRun) -> bool:
        """Queue ``run`` on the direct path, starting its thread if idle; False when off."""
        loop = self._loop
        assert loop is not None  # set by start()
        with self._lock:
            decoder = self._direct if self._direct_enabled else None
            if decoder is None:
                return False
            start = decoder.add(run)
        if start:
            self._direct_done = loop.run_in_executor(
                self._decode_executor(), self._direct_main, decoder
            )
        return True

    def _direct_main(self, decoder: DirectDecoder) -> None:
        """The decoding thread: run the direct path until it has no run left."""
        try:
            decoder.run()
        except DirectUnsupportedError as exc:
            # Continuous batching runs this model its own way: let it take over, for good.
            # Until its manager runs, new requests keep queueing on the decoder (still busy).
            logger.warning("direct decoding is off for this model: %s", exc)
            manager, failure = self._manager, None
            if manager is None:
                assert self._loop is not None  # set by start()
                assert self._stage is not None  # aclose waits for this thread
                try:
                    manager = self._create_manager(self._loop, self._stage)
                except Exception as start_error:
                    failure = f"{type(start_error).__name__}: {start_error}"
                    self._no_manager = f"direct decoding failed ({exc}); {failure}"
            with self._lock:
                self._manager = manager
                self._direct_enabled = False
                runs = decoder.take_all()
            # This thread is no longer needed; once it ends, its OpenMP pool goes with it and
            # the manager's thread is the only one left running parallel regions.
            self._decode_executor().shutdown(wait=False)
            if failure is not None:
                self._post(self._on_outputs, [_failed(r, failure) for r in runs], {})
                return
            for run in runs:
                self._resume(run)
        except Exception as exc:
            logger.exception("direct decoding failed")
            error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                runs = decoder.take_all()
            if runs:
                self._post(self._on_outputs, [_failed(r, error) for r in runs], {})

    def _resume(self, run: DirectRun) -> None:
        """Add a direct run to continuous batching: its prompt and the tokens it delivered as
        the prompt, with the tokens it may still make (any thread)."""
        # After the direct outputs already posted, before the manager's first one.
        self._post(self._rebase, run.request_id)
        kwargs = dict(run.cb_kwargs)
        kwargs["max_new_tokens"] = run.max_new_tokens - len(run.tokens)
        manager = self._manager
        if manager is None or manager.add_request(run.prompt_ids + run.tokens, **kwargs) is None:
            self._post(self._fail, run.request_id)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # pragma: no cover - the loop closed; nobody is listening
            logger.debug("event loop closed; dropping a direct decoding event")

    def _emit_direct(self, outputs: list[DirectOutput], steps: dict[int, SlotStep]) -> None:
        # Called under the lock, for runs still on the direct path.
        self._post(self._on_outputs, outputs, steps)

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
        entry.queue.put_nowait(
            InferenceError(f"the generation engine stopped: {self._fatal_error()}")
        )

    def cancel(self, request_id: str) -> None:
        """Stop a request: it leaves the batch before the next decoding step."""
        entry = self._forget(request_id)
        if entry is None:
            return
        self.stats.cancelled += 1
        with self._lock:
            decoder = self._direct
            runs = decoder.runs() if decoder is not None else []
            for run in runs:
                if run.request_id == request_id:
                    run.cancelled = True
                    return
        if self._manager is not None:
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
                self._cancel_batched(output)
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
                self._cancel_batched(output)
                reason = "stop"
            if tokens and not entry.ignore_eos and tokens[-1] in self._eos_ids:
                reason = "stop"
                new = new[:-1]
            elif grammar_done:
                reason = "stop"
            entry.queue.put_nowait(TokenEvent(new, reason, _take(entry, len(new))))

    def _cancel_batched(self, output: Any) -> None:
        """Stop a continuous-batching request early (a direct run has ended already)."""
        if self._manager is not None and not isinstance(output, DirectOutput):
            self._manager.cancel_request(output.request_id)

    async def aclose(self) -> None:
        """Fail in-flight requests with ``ShuttingDownError``, stop the threads, free the
        caches."""
        if self._stage is None or self._closing:
            return
        self._closing = True
        with self._lock:
            if self._direct is not None:
                self._direct.cancel_all()
        for request_id, entry in list(self._entries.items()):
            self._forget(request_id)
            if self._manager is not None:
                self._manager.cancel_request(request_id)
            entry.queue.put_nowait(ShuttingDownError("the model is being unloaded; retry"))
        try:
            if self._direct_done is not None:
                await self._direct_done  # at most the step in flight
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            # Read after the decoding thread ended: a move to continuous batching may have
            # started the manager meanwhile.
            manager = self._manager
            if manager is not None:
                await asyncio.to_thread(manager.stop, block=True, hard_stop=True)
                await asyncio.to_thread(manager.destroy)
        finally:
            # Drop every reference to the model and cache so the caller can free the memory.
            self._manager = None
            self._model = None
            self._stage = None
            self._direct = None
            self._executor = None
            self._direct_done = None


async def _in_own_thread(loop: asyncio.AbstractEventLoop, fn: Callable[[], _T]) -> _T:
    """``fn()`` on a thread that ends with it: unlike ``asyncio.to_thread``'s pooled threads,
    it leaves no OpenMP pool behind to throttle the thread that decodes."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="hfserve-engine-setup")
    try:
        return await loop.run_in_executor(executor, fn)
    finally:
        executor.shutdown(wait=False)  # its one thread ends once ``fn`` returns


def _failed(run: DirectRun, error: str) -> DirectOutput:
    return DirectOutput(run.request_id, [], True, error)


def _slot_of(request_id: str) -> int:
    """The engine slot in a request id ``hfs-<slot>``."""
    return int(request_id.rpartition("-")[2])


def _take(entry: _Entry, n: int) -> list[StepLogprobs] | None:
    """The logprobs of the next ``n`` delivered tokens (a dropped EOS leaves its one behind)."""
    if entry.logprobs is None:
        return None
    out, entry.logprobs = entry.logprobs[:n], []
    return out
