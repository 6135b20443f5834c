"""Direct decoding: generations batched with the model's own forward and one padded KV cache.

transformers' continuous batching pays for its generality on every step: the scheduler plans
the batch, builds index and mask tensors for the paged KV cache, and every layer writes into
and gathers from its pages. For the small models a CPU serves that overhead is most of a step.
Measured in one process on 2 vCPUs (29M Llama, 36-token prompts, 64 tokens, 2026-12-02):
``generate_batch`` made 343-367 tok/s for 16 prompts; left-padded ``model.generate`` over the
same 16 made 623-731, and the loop below, with requests joining and leaving as in a closed loop
of 16 clients, 617-644. At batch 1 it matches plain ``generate`` (the engine with continuous
batching was 0.90x).

So on the CPU the engine decodes here (``options.direct_decode``). Rows of a
:class:`PaddedBatch` share one ``DynamicCache``, left-padded: a row's keys sit at the right
end, an attention mask hides the padding, and each row carries its own positions, so a row's
tokens are those it would get alone (``tests/skills/test_direct_decode.py`` checks them
against ``generate``). Requests join between steps (their prompts prefilled together, then
their caches padded to a common length and concatenated) and leave between steps (rows
selected out, and columns that are padding for every remaining row cut off the left).

Why by hand: transformers has no batch that requests can join and leave except continuous
batching, whose per-step cost is the point above; ``generate`` cannot admit or drop a request
mid-batch. The forward, the cache and the attention are transformers'; ours is the loop and
moving cache rows, about what TGI's first ``CausalLMBatch`` did with its ``concatenate`` and
``filter``.

Sampling is the same :class:`~.stage.SamplingStage` as under continuous batching (seeds,
penalties, grammars, logprobs): one thread steps it, under the engine's lock, only for runs
that are neither cancelled nor handed over. A model whose forward refuses this (another cache
layout, no padding mask) raises :class:`DirectUnsupportedError`, and the engine moves its runs
to continuous batching for good.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hfserve.skills.generation.stage import SamplingStage, SlotStep

if TYPE_CHECKING:
    import torch

__all__ = [
    "DirectDecoder",
    "DirectOutput",
    "DirectRun",
    "DirectUnsupportedError",
    "PaddedBatch",
]


class DirectUnsupportedError(Exception):
    """The model's forward failed on a padded batch: continuous batching takes over."""


@dataclass
class DirectOutput:
    """One step's output of a direct run, shaped like transformers' ``GenerationOutput``."""

    request_id: str
    generated_tokens: list[int]
    finished: bool = False
    error: str | None = None

    def is_finished(self) -> bool:
        """Whether the run ended with this output."""
        return self.finished


@dataclass
class DirectRun:
    """A request on the direct path; the event loop sets ``cancelled`` (under the lock)."""

    request_id: str
    slot: int
    prompt_ids: list[int]
    max_new_tokens: int
    # The ids that end the run (empty when the request ignores EOS).
    stop_ids: frozenset[int]
    # ``add_request`` keyword arguments for continuous batching, should the run move there.
    cb_kwargs: dict[str, Any]
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    handed_over: bool = False
    finished: bool = False

    def stopped(self) -> bool:
        """Finished, cancelled or handed over: the decoder must not step it again."""
        return self.finished or self.cancelled or self.handed_over


def _keeps_logits(model: Any) -> bool:
    supports = getattr(model, "_supports_logits_to_keep", None)
    return bool(callable(supports) and supports())


def _cache_kwarg(model: Any) -> str:
    """The forward's name for the KV cache: ``cache`` since transformers 5.24 (which warns on
    the older ``past_key_values``)."""
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


# Columns a layer's buffer keeps free beyond its length: at least this, or its length again.
_HEADROOM = 64


@functools.cache
def _growing_layer_class() -> Any:
    """A ``DynamicLayer`` that appends into spare capacity instead of concatenating (the class
    is made once, on first use, so that transformers is imported only then).

    ``DynamicLayer.update`` concatenates every step, copying the whole cache: measured at batch
    16 (29M Llama, 2 vCPUs), ``aten::cat`` took 27% of the step. This layer keeps keys and
    values as views of buffers with headroom, so a step writes only its new column; the buffer
    doubles when full. Anything that assigns ``keys`` itself (row selection, padding) leaves
    a plain tensor, which the next update copies into a fresh buffer.
    """
    from transformers.cache_utils import DynamicLayer

    class _GrowingLayer(DynamicLayer):  # type: ignore[no-untyped-call]
        _buffers: tuple[Any, Any] | None = None
        _view: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            used = self.keys.shape[-2] if self.keys is not None and self.keys.dim() == 4 else 0
            end = used + key_states.shape[-2]
            if (
                self._view is not self.keys
                or self._buffers is None
                or end > self._buffers[0].shape[-2]
            ):
                capacity = end + max(_HEADROOM, end)
                keys = key_states.new_empty((*key_states.shape[:2], capacity, key_states.shape[-1]))
                values = value_states.new_empty(
                    (*value_states.shape[:2], capacity, value_states.shape[-1])
                )
                if used:
                    keys[:, :, :used].copy_(self.keys)
                    values[:, :, :used].copy_(self.values)
                self._buffers = (keys, values)
            keys, values = self._buffers
            keys[:, :, used:end].copy_(key_states)
            values[:, :, used:end].copy_(value_states)
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            self._view = self.keys
            return self.keys, self.values

    return _GrowingLayer


class PaddedBatch:
    """Rows decoding together over one left-padded ``DynamicCache``."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self._cache_kwarg = _cache_kwarg(model)
        self._keep_logits = _keeps_logits(model)
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, columns): 1 for a real token
        self._positions: torch.Tensor | None = None  # (rows, 1): each row's next position

    @property
    def size(self) -> int:
        """Rows in the batch."""
        return 0 if self._mask is None else int(self._mask.size(0))

    @property
    def columns(self) -> int:
        """Cache length, padding included."""
        return 0 if self._mask is None else int(self._mask.size(1))

    def nbytes(self) -> int:
        """Bytes of the cache's keys and values, spare capacity included."""
        cache = self._cache
        if cache is None:
            return 0
        total = 0
        for layer in cache.layers:
            buffers = getattr(layer, "_buffers", None)
            held = buffers if buffers is not None and layer._view is layer.keys else None
            for t in held or (layer.keys, layer.values):
                total += t.numel() * t.element_size()
        return total

    def _forward(self, **kwargs: Any) -> torch.Tensor:
        try:
            out = self._model(use_cache=True, **kwargs)
        except Exception as exc:
            raise DirectUnsupportedError(f"{type(exc).__name__}: {exc}") from exc
        # fp32 logits, as continuous batching hands its logits processors.
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Add rows for ``prompts`` (after the current rows); their next-token logits.

        Raises:
            DirectUnsupportedError: the forward failed, or the model's cache is not made of
                plain dynamic layers (sliding windows, states) that rows can be padded in.
        """
        import torch
        from transformers import DynamicCache

        device = self._model.device
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(1) - 1).clamp_(min=0)
        cache = DynamicCache(config=self._model.config)
        kinds = {type(layer).__name__ for layer in cache.layers}
        if kinds != {"DynamicLayer"}:
            raise DirectUnsupportedError(f"cache layers {sorted(kinds)} cannot be padded")
        layer_class = _growing_layer_class()
        cache.layers = [layer_class() for _ in cache.layers]
        kwargs: dict[str, Any] = {self._cache_kwarg: cache}
        if self._keep_logits:
            kwargs["logits_to_keep"] = 1
        logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        self._append(cache, mask, positions[:, -1:] + 1)
        return logits

    def _append(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor) -> None:
        import torch
        import torch.nn.functional as F

        if self._cache is None or self._mask is None or self._positions is None:
            self._cache, self._mask, self._positions = cache, mask, positions
            return
        old, new = self.columns, int(mask.size(1))
        width = max(old, new)

        def joined(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            # (rows, heads, columns, dim): zeros on the left of the shorter side.
            pad_mine, pad_theirs = (0, 0, width - old, 0), (0, 0, width - new, 0)
            return torch.cat([F.pad(mine, pad_mine), F.pad(theirs, pad_theirs)])

        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = joined(mine.keys, theirs.keys)
            mine.values = joined(mine.values, theirs.values)
        self._mask = torch.cat([F.pad(self._mask, (width - old, 0)), F.pad(mask, (width - new, 0))])
        self._positions = torch.cat([self._positions, positions])

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order), and cut columns that are padding in all of them."""
        import torch

        if len(rows) == self.size:
            return
        if not rows or self._mask is None or self._positions is None:
            self._cache = self._mask = self._positions = None
            return
        index = torch.tensor(rows, device=self._mask.device)
        self._cache.batch_select_indices(index)
        mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        used = mask.any(0).nonzero()
        cut = int(used[0]) if used.numel() else 0
        if cut:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, cut:]
                layer.values = layer.values[:, :, cut:]
            mask = mask[:, cut:]
        self._mask = mask

    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """One decoding step: each row's last token in, each row's next-token logits out."""
        import torch

        assert self._mask is not None  # rows were added
        assert self._positions is not None
        ids = torch.tensor(tokens, dtype=torch.long, device=self._mask.device)[:, None]
        self._mask = torch.cat([self._mask, self._mask.new_ones((self.size, 1))], dim=1)
        logits = self._forward(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=self._positions,
            **{self._cache_kwarg: self._cache},
        )
        self._positions = self._positions + 1
        return logits


class DirectDecoder:
    """The direct path's one decoding thread: admits runs, steps the batch, emits outputs.

    Args:
        model: the causal LM.
        stage: the engine's sampling stage (used only under ``lock``).
        lock: the engine's lock; ``add``, ``cancel`` and the handover take it too.
        emit: called under the lock with each step's outputs and per-slot stage records.
        count: called under the lock after the stage prepared a step (the engine's stats).
        max_rows: the most rows decoding at once; later runs wait for a row.
        prefill_tokens: the most prompt tokens (padding included) prefilled in one forward;
            a longer prompt is prefilled alone.
    """

    def __init__(
        self,
        model: Any,
        stage: SamplingStage,
        lock: threading.Lock,
        emit: Callable[[list[DirectOutput], dict[int, SlotStep]], None],
        count: Callable[[SamplingStage], None],
        *,
        max_rows: int,
        prefill_tokens: int,
    ) -> None:
        self._stage = stage
        self._lock = lock
        self._emit = emit
        self._count = count
        self._max_rows = max_rows
        self._prefill_tokens = prefill_tokens
        self._waiting: deque[DirectRun] = deque()
        self._active: list[DirectRun] = []
        self._batch = PaddedBatch(model)
        self.busy = False  # a thread is in ``run`` (set by ``add``, cleared by ``run``)

    def nbytes(self) -> int:
        """Bytes of the padded cache."""
        return self._batch.nbytes()

    def add(self, run: DirectRun) -> bool:
        """Queue ``run`` (caller holds the lock); True when a thread must start ``run()``."""
        self._waiting.append(run)
        if self.busy:
            return False
        self.busy = True
        return True

    def runs(self) -> list[DirectRun]:
        """Runs decoding or waiting (caller holds the lock)."""
        return [r for r in (*self._active, *self._waiting) if not r.stopped()]

    def _admit(self) -> list[DirectRun]:
        """Drop stopped rows and take waiting runs into free rows (under the lock)."""
        keep = [i for i, r in enumerate(self._active) if not r.stopped()]
        self._batch.keep(keep)
        self._active = [self._active[i] for i in keep]
        new: list[DirectRun] = []
        width = 0
        while self._waiting and len(self._active) + len(new) < self._max_rows:
            run = self._waiting[0]
            if run.stopped():
                self._waiting.popleft()
                continue
            wider = max(width, len(run.prompt_ids))
            if new and wider * (len(new) + 1) > self._prefill_tokens:
                break
            new.append(self._waiting.popleft())
            width = wider
        return new

    def run(self) -> None:
        """Decode until no run is left (the thread's body).

        Raises:
            DirectUnsupportedError: the model's forward refused a padded batch.
        """
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    new = self._admit()
                    if not new and not self._active:
                        self.busy = False  # the batch is empty: ``_admit`` dropped every row
                        return
                    # Active from here (``cancel`` finds them), so a failing prefill hands
                    # them over with the rest.
                    self._active.extend(new)
                if new:
                    self._sample(new, self._batch.prefill([r.prompt_ids for r in new]))
                    continue  # drop what ended on its first token before the next step
                # A row cancelled before its first token was sampled is dropped next turn.
                tokens = [r.tokens[-1] if r.tokens else 0 for r in self._active]
                self._sample(self._active, self._batch.step(tokens))

    def _sample(self, runs: list[DirectRun], logits: torch.Tensor) -> None:
        """Pick each live run's token (``logits`` has a row per run) and emit the outputs."""
        import torch

        with self._lock:
            live = [i for i, r in enumerate(runs) if not r.stopped()]
            if not live:
                return
            if len(live) < len(runs):
                logits = logits.index_select(0, torch.tensor(live, device=logits.device))
            chosen = [runs[i] for i in live]
            rows = self._stage.prepare([r.slot for r in chosen])
            self._count(self._stage)
            picked = self._stage.run(logits, rows).argmax(-1).tolist()
            steps = self._stage.collect(
                {r.slot: int(t) for r, t in zip(chosen, picked, strict=True)}
            )
            outputs = []
            for run, token in zip(chosen, picked, strict=True):
                run.tokens.append(int(token))
                step = steps.get(run.slot)
                run.finished = (
                    len(run.tokens) >= run.max_new_tokens
                    or token in run.stop_ids
                    or (step is not None and (step.grammar_done or step.grammar_error is not None))
                )
                outputs.append(DirectOutput(run.request_id, list(run.tokens), run.finished))
            self._emit(outputs, steps)

    def cancel_all(self) -> None:
        """Cancel every run (under the lock): the thread stops after its step in flight."""
        for run in self.runs():
            run.cancelled = True
        self._waiting.clear()

    def take_all(self) -> list[DirectRun]:
        """Take every live run away and start over empty: the caller moves or fails them.

        Only the decoding thread calls this, under the lock, as it leaves ``run`` on an error.
        """
        runs = self.runs()
        for run in runs:
            run.handed_over = True
        self._waiting.clear()
        self._active = []
        self._batch.keep([])
        self.busy = False
        return runs
