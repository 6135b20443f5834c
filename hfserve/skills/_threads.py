"""One CPU thread for small forward passes: what the thread count is worth depends on the step.

torch runs every operator of a forward over ``torch.get_num_threads()`` OpenMP threads, and
``hfserve serve`` makes idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``, see
:func:`hfserve.cli.serve.apply_torch_threads`), so each operator first wakes the others. For a
small forward - one decode step of a few requests, one short sentence - that wake-up costs more
than the second thread saves. Measured on 2 vCPUs, same process, alternating rounds
(docs/benchmarks.md, "CPU threads"): a 31M Llama decoding 4 requests at a time made 127 tok/s on
one thread against 89 on two, one request 48 against 46; MiniLM encoding one sentence 63
sentences/s against 49. Batches of 16 decode rows and of 32 sentences, and prefill chunks, were
faster on two threads.

So :func:`pace_forward_threads` hooks the model's forward: a forward whose work is at most
:data:`SMALL_FORWARD_WORK` (tokens x hidden size squared, the shape of every projection in a
layer) runs on one thread, anything larger on the configured count. The hook sets the count on
the thread that runs the forward, before every forward, so a thread that another model left on
one thread is corrected too. torch's own setter is used because it also sets MKL's count for the
thread; a forward without token ids (pixels, audio features) always gets the configured count.

Text generation, embeddings, classification and reranking no longer pace: each runs its
forwards on one thread of its own (the generation engine's decoding thread, the micro-batcher's
thread), so a server of such a model keeps one OpenMP pool, whose threads then spin briefly
instead of sleeping at once (libgomp stops spinning only while its pools hold more threads than
there are CPUs), and two threads beat one from one request up. Measured on 2 vCPUs, both builds
up at once, 3 alternating rounds (2026-12-02): chat c=1 94.1 vs 66.3 tok/s paced; MiniLM
embeddings c=1 124.9 vs 78.0 req/s (offline ``encode(batch_size=1)`` 133.0), c=32 410.3 vs
409.1. Speech and vision models still pace (not remeasured).
"""

from __future__ import annotations

import functools
import os
from typing import Any

__all__ = ["SMALL_FORWARD_WORK", "configured_threads", "pace_forward_threads"]

# 12 tokens at hidden size 512 (21 at MiniLM's 384): a decode step of up to 12 requests, one
# sentence. At 4 rows one thread wins by 40%, at 16 two threads win by 7-8% (generate in
# process 325 vs 300 tok/s; chat through the server at c=16 249.5 vs 232.0, 2026-12-02).
SMALL_FORWARD_WORK = 12 * 512 * 512


@functools.cache
def configured_threads() -> int:
    """torch's CPU threads for this process, read once, before any hook changes a thread's.

    ``OMP_NUM_THREADS`` when set (``hfserve serve`` sets it), else torch's count.
    """
    import torch

    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else int(torch.get_num_threads())


def _hidden_size(model: Any) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("hidden_size", "d_model", "n_embd"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _tokens(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    ids = kwargs.get("input_ids")
    if ids is None and args:
        ids = args[0]
    if ids is not None and hasattr(ids, "numel"):
        return int(ids.numel())
    embeds = kwargs.get("inputs_embeds")
    if embeds is not None and getattr(embeds, "ndim", 0) >= 2:
        return int(embeds.shape[:-1].numel())
    return None


def pace_forward_threads(model: Any) -> Any:
    """Hook ``model``'s forward so small forwards run on one CPU thread (see the module doc).

    Returns the hook's handle, or None where there is nothing to pace: a model off the CPU,
    or a process with one thread.
    """
    import torch

    threads = configured_threads()
    device = getattr(model, "device", None)
    if threads <= 1 or getattr(device, "type", "cpu") != "cpu":
        return None
    hidden = _hidden_size(model)
    small = SMALL_FORWARD_WORK // (hidden * hidden) if hidden else 0

    def pace(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        tokens = _tokens(args, kwargs) if small else None
        want = 1 if tokens is not None and tokens <= small else threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)

    return model.register_forward_pre_hook(pace, with_kwargs=True)
