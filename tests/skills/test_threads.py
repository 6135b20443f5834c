"""Small forwards run on one CPU thread, larger ones on the configured count."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from hfserve.runtime.demo import minilm_path
from hfserve.skills._threads import configured_threads, pace_forward_threads
from hfserve.skills.base import RuntimeOptions
from hfserve.skills.embeddings import EmbeddingsSkill


class _Probe(torch.nn.Module):
    """Records the thread count each forward runs with."""

    def __init__(self, hidden: int | None) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=hidden)
        self.seen: list[int] = []

    def forward(self, input_ids: Any = None, **kwargs: Any) -> None:
        self.seen.append(torch.get_num_threads())


@pytest.fixture
def three_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process configured for 3 torch threads; the main thread's count is restored after."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    configured_threads.cache_clear()
    yield
    configured_threads.cache_clear()
    torch.set_num_threads(before)


def _on_a_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` on its own thread, as the engine and batcher threads do (counts are per thread)."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    assert not errors, errors


@pytest.mark.usefixtures("three_threads")
def test_forwards_up_to_the_small_budget_run_on_one_thread() -> None:
    probe = _Probe(hidden=512)  # 12 tokens at hidden size 512 is the budget
    assert pace_forward_threads(probe) is not None

    def forwards() -> None:
        probe(input_ids=torch.zeros(1, 12, dtype=torch.long))  # a 12-row decode step
        probe(input_ids=torch.zeros(1, 13, dtype=torch.long))  # one token more
        probe(torch.zeros(2, 6, dtype=torch.long))  # positional ids, padded batch of 12
        probe(input_ids=torch.zeros(1, 16, dtype=torch.long))  # a 16-row decode step
        probe(inputs_embeds=torch.zeros(1, 4, 512))  # embeddings count their tokens too
        probe(pixel_values=torch.zeros(1, 3, 8, 8))  # no token count: the configured count

    _on_a_thread(forwards)
    assert probe.seen == [1, 3, 1, 3, 1, 3]


@pytest.mark.usefixtures("three_threads")
def test_a_wider_model_has_a_smaller_budget() -> None:
    probe = _Probe(hidden=1024)  # a quarter of the tokens: 3
    pace_forward_threads(probe)

    def forwards() -> None:
        for n in (3, 4, 1):
            probe(input_ids=torch.zeros(1, n, dtype=torch.long))

    _on_a_thread(forwards)
    assert probe.seen == [1, 3, 1]


@pytest.mark.usefixtures("three_threads")
def test_a_model_without_a_hidden_size_still_gets_the_configured_count() -> None:
    # Another model's small forward may have left this thread on one thread: every paced
    # forward sets its own count.
    probe = _Probe(hidden=None)
    pace_forward_threads(probe)

    def forwards() -> None:
        torch.set_num_threads(1)
        probe(input_ids=torch.zeros(1, 1, dtype=torch.long))

    _on_a_thread(forwards)
    assert probe.seen == [3]


def test_nothing_to_pace_with_one_thread_or_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    configured_threads.cache_clear()
    try:
        assert configured_threads() == 1
        assert pace_forward_threads(_Probe(hidden=512)) is None
        monkeypatch.setenv("OMP_NUM_THREADS", "4")
        configured_threads.cache_clear()
        on_gpu = _Probe(hidden=512)
        on_gpu.device = SimpleNamespace(type="cuda")  # type: ignore[assignment]
        assert pace_forward_threads(on_gpu) is None
    finally:
        configured_threads.cache_clear()


def test_configured_threads_is_torchs_count_without_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value in (None, "", "lots", "0"):
        if value is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", value)
        configured_threads.cache_clear()
        assert configured_threads() == torch.get_num_threads()
    configured_threads.cache_clear()


async def test_an_embedding_model_runs_every_forward_on_the_full_count() -> None:
    """Through the real skill: a one-sentence request no longer drops to one thread (the
    batcher's thread is the process's only OpenMP pool, where two threads win)."""
    loaded = EmbeddingsSkill().load(str(minilm_path()), "cpu", "float32", RuntimeOptions())
    model: Any = loaded._model  # type: ignore[attr-defined]
    assert not model._forward_pre_hooks  # nothing sets a thread count per forward
    seen: list[tuple[int, int]] = []
    model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(
            (int(kwargs["input_ids"].numel()), torch.get_num_threads())
        ),
        with_kwargs=True,
    )
    await loaded.start()
    try:
        await loaded.embed(["a short sentence"])  # type: ignore[attr-defined]
        await loaded.embed([" ".join(["word"] * 100)])  # type: ignore[attr-defined]
    finally:
        await loaded.aclose()
    assert len(seen) == 2
    assert seen[0][1] == seen[1][1], seen  # one sentence gets the count 100 words get
