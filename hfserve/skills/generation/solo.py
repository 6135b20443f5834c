"""The batch-1 path: a generation that has the engine to itself decodes outside the scheduler.

transformers' continuous batching pays for what makes it batch: each step the scheduler plans
the batch, builds index and mask tensors for the paged KV cache, and every layer writes into and
gathers from its pages. With one request that buys nothing. Measured in one process on 2 vCPUs
(31M Llama, 64 tokens, alternating rounds, 2026-12-02): the engine made 47.0 tok/s, sequential
``model.generate`` 52.3, and the loop below (the model's forward with a ``DynamicCache``) 52.0
against ``generate``'s 49.1 in another pair of rounds.

So when a request arrives while the engine is idle, it decodes here, on the engine's one solo
thread, with the same :class:`~.stage.SamplingStage` (its table row, seeded RNG, penalties,
grammar and logprobs are the same whichever path runs a step). The moment a second request
arrives, both enter continuous batching: the solo request as a new prompt of its prompt plus
the tokens it has delivered, with the tokens it still may make. That costs one prefill of that
sequence, once, and the solo step in flight is dropped. Only one thread ever uses the stage:
the solo thread uses it only under the engine's lock, after checking that the run is still
its own, and the handover takes the run away under the same lock.

Why not ``model.generate`` here: it cannot stop at a step boundary to hand a request over, and
its per-step overhead was the 6% the loop saves. The forward, the cache and the attention are
transformers' own; only the loop is ours.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hfserve.skills.generation.stage import SamplingStage, SlotStep

__all__ = ["SoloOutput", "SoloRun", "SoloUnsupportedError", "decode_solo"]


class SoloUnsupportedError(Exception):
    """The model's own forward failed before the stage ran: continuous batching takes over."""


@dataclass
class SoloOutput:
    """One step's output of a solo run, shaped like transformers' ``GenerationOutput``."""

    request_id: str
    generated_tokens: list[int]
    finished: bool = False
    error: str | None = None

    def is_finished(self) -> bool:
        """Whether the run ended with this output."""
        return self.finished


@dataclass
class SoloRun:
    """A request decoding on the solo path; the event loop sets ``handoff`` and ``cancelled``."""

    request_id: str
    slot: int
    prompt_ids: list[int]
    max_new_tokens: int
    # The ids that end the run (empty when the request ignores EOS).
    stop_ids: frozenset[int]
    # ``add_request`` keyword arguments for continuous batching, should the run be handed over.
    cb_kwargs: dict[str, Any]
    tokens: list[int] = field(default_factory=list)
    handoff: bool = False
    cancelled: bool = False

    def stopped(self) -> bool:
        """Handed over or cancelled: the solo thread must not step it again."""
        return self.handoff or self.cancelled


def _keeps_logits(model: Any) -> bool:
    supports = getattr(model, "_supports_logits_to_keep", None)
    return bool(callable(supports) and supports())


def _cache_kwarg(model: Any) -> str:
    """The forward's name for the KV cache: ``cache`` since transformers 5.24 (which warns on
    the older ``past_key_values``)."""
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def decode_solo(
    model: Any,
    stage: SamplingStage,
    run: SoloRun,
    lock: threading.Lock,
    emit: Callable[[SoloOutput, dict[int, SlotStep]], None],
    count: Callable[[SamplingStage], None],
) -> bool:
    """Decode ``run`` until it finishes (True) or is handed over or cancelled (False).

    Each step's forward runs unlocked; the sampling, ``emit`` (every step's output and the
    stage's per-slot step record) and ``count`` (after the stage prepared the step) run under
    ``lock``, and only while the run is neither handed over nor cancelled.

    Raises:
        SoloUnsupportedError: the model's forward failed (the run made no step then).
    """
    import torch
    from transformers import DynamicCache

    device = model.device
    kwargs: dict[str, Any] = {_cache_kwarg(model): DynamicCache(config=model.config)}
    if _keeps_logits(model):
        kwargs["logits_to_keep"] = 1
    ids = torch.tensor([run.prompt_ids], device=device)
    positions = torch.arange(ids.size(1), device=device)[None]
    with torch.inference_mode():
        while not run.stopped():
            try:
                out = model(input_ids=ids, position_ids=positions, use_cache=True, **kwargs)
            except Exception as exc:
                raise SoloUnsupportedError(f"{type(exc).__name__}: {exc}") from exc
            # fp32 logits, as continuous batching hands its logits processors.
            logits = out.logits[:, -1, :].float()
            with lock:
                if run.stopped():
                    break  # the request went on without this step
                rows = stage.prepare([run.slot])
                count(stage)
                token = int(stage.run(logits, rows).argmax(-1)[0])
                steps = stage.collect({run.slot: token})
                run.tokens.append(token)
                step = steps.get(run.slot)
                done = (
                    len(run.tokens) >= run.max_new_tokens
                    or token in run.stop_ids
                    or (step is not None and (step.grammar_done or step.grammar_error is not None))
                )
                emit(SoloOutput(run.request_id, list(run.tokens), done), steps)
            if done:
                return True
            ids = torch.tensor([[token]], device=device)
            positions = positions[:, -1:] + 1
    return False
