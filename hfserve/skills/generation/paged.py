"""transformers' continuous batching, set up for the generation engine.

The engine's second path (see :mod:`.engine`): on accelerators, with ``direct_decode`` off, and
for a model whose forward refuses a padded batch. This module is the one place that knows
transformers' continuous-batching internals: its config, the per-request logits processor that
hands each step's logits to our :class:`~.stage.SamplingStage`, and the output router that hands
each step's outputs to the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hfserve.errors import ModelLoadError
from hfserve.skills.base import RuntimeOptions
from hfserve.skills.generation.stage import SamplingStage

if TYPE_CHECKING:
    import torch

__all__ = ["SLOT_KWARG", "build_processor", "build_router", "cb_config", "start_manager"]

logger = logging.getLogger(__name__)

# The per-request kwarg that carries a request's engine slot to the sampler.
SLOT_KWARG = "hfserve_slot"
# Left alone, transformers sizes the KV cache to 80-90% of free device memory (of *system* RAM on
# CPU), which starves every other model in the cache. Size it from the concurrency instead:
# each generation gets up to this much context (longer ones share the pool, which the scheduler
# manages by waiting and requeueing). ``extra["continuous_batching"]`` overrides it.
_CONTEXT_PER_GENERATION = {"cpu": 4096, "accelerator": 8192}
# Prefill chunk per step: the attention mask grows with batch tokens x cache tokens.
_MAX_BATCH_TOKENS = {"cpu": 512, "accelerator": 2048}
_PAGE_SIZE = 256


def cb_config(model: Any, options: RuntimeOptions, max_context: int) -> Any:
    """transformers' ``ContinuousBatchingConfig`` for ``model``, sized from ``options``."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    kind = "cpu" if model.device.type == "cpu" else "accelerator"
    kwargs: dict[str, Any] = {
        "max_requests_per_batch": options.max_concurrent_generations,
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
    per_generation = min(max_context, _CONTEXT_PER_GENERATION[kind])
    # ... and the pool always holds one generation of the full context, or the scheduler
    # could never place it.
    total = max(max_context, options.max_concurrent_generations * per_generation)
    # ``block_size`` was renamed ``page_size`` after transformers 5.17.
    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    kwargs["page_size" if "page_size" in names else "block_size"] = _PAGE_SIZE
    kwargs["num_blocks"] = max(1, math.ceil(total / _PAGE_SIZE))
    kwargs["max_batch_tokens"] = _MAX_BATCH_TOKENS[kind]
    kwargs.update(options.extra.get("continuous_batching", {}))
    return ContinuousBatchingConfig(**kwargs)


def start_manager(
    model: Any,
    stage: SamplingStage,
    *,
    eos_ids: tuple[int, ...],
    options: RuntimeOptions,
    max_context: int,
    router: Any,
    on_prepare: Callable[[SamplingStage], None],
) -> Any:
    """Build and start transformers' manager for ``model``, sampling through ``stage`` and
    routing its outputs through ``router`` (blocking).

    Raises:
        ModelLoadError: the model has no continuous batching, or refuses this configuration.
    """
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessorList,
    )
    from transformers.generation.logits_process import LogitsProcessorList

    if not hasattr(model, "init_continuous_batching"):
        raise ModelLoadError(
            f"{type(model).__name__} does not support transformers' continuous batching"
        )
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=False, eos_token_id=list(eos_ids) or -1, max_new_tokens=16
    )
    try:
        manager = model.init_continuous_batching(
            generation_config=config,
            continuous_batching_config=cb_config(model, options, max_context),
        )
    except (ValueError, TypeError, NotImplementedError, AttributeError) as exc:
        raise ModelLoadError(
            f"continuous batching is not available for {type(model).__name__}: {exc}"
        ) from exc
    processors = ContinuousBatchingLogitsProcessorList(
        LogitsProcessorList([build_processor(stage, on_prepare)])
    )
    # One int32 row of per-request arguments: the slot (counted by transformers only for
    # processors it converts itself).
    processors.tensors_required = 1
    manager.logit_processor = processors
    manager.output_router = router
    manager.start()
    return manager


def build_processor(stage: SamplingStage, on_prepare: Callable[[SamplingStage], None]) -> Any:
    """Our sampling stage as transformers' per-request logits processor (built lazily).

    This and :func:`build_router` are the two places that know transformers' continuous
    batching internals: a processor sees each step's logits with one int32 argument per row
    (here the request's table row), and the router sees each step's outputs.
    """
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class _Sampler(ContinuousBatchingLogitsProcessor):
        """Hands the step's logits to the sampling stage; see the module docstring."""

        supported_kwargs: dict[str, type] = {SLOT_KWARG: int}  # noqa: RUF012 - base API
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            # Padding rows of a step point at the table's no-op row.
            int32_tensor.fill_(stage.table.dummy)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            slots = [
                r.state.logit_processor_kwargs.get(SLOT_KWARG, -1) for r in requests_with_new_token
            ]
            rows = stage.prepare(slots)
            on_prepare(stage)
            return rows

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            return stage.run(scores, tensor_arg)

    return _Sampler()


def build_router(
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
