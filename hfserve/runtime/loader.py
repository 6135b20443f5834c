"""``ModelLoader``: model name -> spec -> skill -> device -> load -> cache, behind a breaker.

One loader serves every route. ``--model`` models are pinned and preloaded; ``--models-dir``
models are offered, loaded on first request, and leave the cache by LRU, byte budget or idle
TTL, after which their memory is really given back (``core.memory.release_memory``). A cold
model is loaded once however many requests ask for it at the same time; a model whose load
keeps failing is refused fast (``CircuitOpenError``) until its breaker's recovery timeout passes.

A load runs in a daemon thread of its own rather than ``asyncio.to_thread``: a thread cannot be
interrupted, so a load past ``load_timeout`` keeps running after its callers gave up. The
loader remembers it, refuses a second load of that alias until it ends, then closes the late
model; and since the thread is a daemon outside the loop's executor, neither the loop's
shutdown nor the interpreter's exit waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol, TypeVar

from hfserve.core.batcher import BatchObserver
from hfserve.core.breaker import CircuitBreaker
from hfserve.core.clock import Clock, MonotonicClock
from hfserve.core.memory import release_memory
from hfserve.core.model_cache import ModelCache
from hfserve.errors import (
    ConfigError,
    HfServeError,
    ModelLoadError,
    ModelNotFoundError,
    RetryableError,
    ShuttingDownError,
    UnavailableError,
)
from hfserve.hardware import DeviceChoice, HardwareReport, choose_device
from hfserve.runtime.specs import (
    ModelSpec,
    discover_models,
    parse_chat_templates,
    parse_model_spec,
)
from hfserve.settings import Settings
from hfserve.skills.base import LoadedModel, RuntimeOptions, Skill
from hfserve.skills.registry import SkillRegistry

__all__ = ["LoaderObserver", "ModelLoader", "ModelState"]

logger = logging.getLogger(__name__)

ModelState = Literal["loaded", "loading", "available"]
T = TypeVar("T")


def _in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run ``fn`` in a new daemon thread; a future of its result on the running loop.

    Unlike ``asyncio.to_thread`` nothing waits for this thread at loop shutdown or exit.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # a caller may have cancelled it meanwhile
            outcome()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            done = functools.partial(settle, functools.partial(future.set_exception, exc))
        else:
            done = functools.partial(settle, functools.partial(future.set_result, result))
        # A closed loop (the process is exiting) raises RuntimeError: the result is dropped.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(done)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class LoaderObserver(Protocol):
    """Receives load, eviction and load-failure events (for metrics and logs)."""

    def on_load(self, model: str, seconds: float) -> None:
        """``model`` finished loading in ``seconds``."""
        ...

    def on_evict(self, model: str, reason: str) -> None:
        """``model`` left the cache (``lru``, ``bytes``, ``idle``, ``explicit``, ``clear``)."""
        ...

    def on_load_failure(self, model: str) -> None:
        """Loading ``model`` failed."""
        ...


def runtime_options_from(
    settings: Settings, *, batch_observer: BatchObserver | None = None
) -> RuntimeOptions:
    """The batching and concurrency options of ``settings`` (the one place they are copied)."""
    return RuntimeOptions(
        max_batch_size=settings.max_batch_size,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        max_concurrent_generations=settings.max_concurrent_generations,
        direct_decode=settings.direct_decode,
        trust_remote_code=settings.trust_remote_code,
        batch_observer=batch_observer,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _AliasedObserver:
    """Reports one model's batches under its served alias."""

    inner: BatchObserver
    alias: str

    def on_batch(
        self, model: str, size: int, queue_waits: Sequence[float], run_seconds: float
    ) -> None:
        """Pass the batch on under the alias."""
        self.inner.on_batch(self.alias, size, queue_waits, run_seconds)


class ModelLoader:
    """Turns model names into loaded, started models, through a ``ModelCache`` and breakers.

    With no ``settings.models`` it serves the offline demo models (``runtime.demo``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: SkillRegistry | None = None,
        clock: Clock | None = None,
        hardware: HardwareReport | None = None,
        observer: LoaderObserver | None = None,
        runtime_options: RuntimeOptions | None = None,
    ) -> None:
        self._settings = settings
        self._registry = registry if registry is not None else SkillRegistry()
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._hardware = hardware
        self._observer = observer
        self._options = runtime_options or runtime_options_from(settings)
        self._specs: dict[str, ModelSpec] | None = None
        self._cache: ModelCache[str, LoadedModel] = ModelCache(
            max_entries=settings.max_loaded_models,
            max_bytes=settings.cache_memory,
            idle_ttl=settings.model_idle_ttl,
            clock=self._clock,
            on_evict=self._on_evict,
        )
        self._breakers: dict[str, CircuitBreaker] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        # Load threads that outlived their timeout (or a cancelled load): the alias stays
        # busy until they end, and what they produce is closed, never served.
        self._late: dict[str, asyncio.Future[tuple[Skill, LoadedModel]]] = {}
        self._closers: set[asyncio.Task[None]] = set()
        self._tasks: dict[str, str | None] = {}
        # Models the cache let go of, waiting for ``aclose`` (the cache's callback is sync).
        self._retired: list[tuple[str, LoadedModel, str]] = []
        # Requests using each model (by id: a model need not be hashable), and evicted models
        # whose close waits for the last of them (see ``hold``).
        self._holds: dict[int, int] = {}
        self._held_retired: dict[int, tuple[str, LoadedModel, str]] = {}
        self._closed = False

    # --- names -----------------------------------------------------------------------------

    @property
    def specs(self) -> dict[str, ModelSpec]:
        """Alias -> spec of every model this loader serves, the default first."""
        if self._specs is None:
            self._specs = self._build_specs()
        return dict(self._specs)

    @property
    def default_model(self) -> str:
        """The alias of the default model (the first ``--model``)."""
        return next(iter(self.specs))

    def add_model(self, spec: ModelSpec) -> None:
        """Serve one more model (e.g. registered at runtime); ``spec.pinned`` decides whether
        the cache may evict it.

        Raises:
            ConfigError: the alias is already served.
        """
        specs = self.specs
        if spec.alias in specs:
            raise ConfigError(f"model alias {spec.alias!r} is already served")
        assert self._specs is not None
        self._specs[spec.alias] = spec

    def resolve_name(self, name: str) -> ModelSpec:
        """The spec for a model alias or source (path or Hub id).

        A name not known yet triggers a rescan of ``--models-dir`` (a model copied there
        while the server runs is served without a restart).

        Raises:
            ModelNotFoundError: no served model has that name; the message lists them.
        """
        for attempt in range(2):
            specs = self.specs
            if name in specs:
                return specs[name]
            for spec in specs.values():
                if name == spec.source:
                    return spec
            if attempt == 0 and not self.rescan():
                break
        available = ", ".join(self.specs)
        raise ModelNotFoundError(f"model {name!r} is not served here; available: {available}")

    def rescan(self) -> list[str]:
        """Offer the models added to ``--models-dir`` since the last scan; their aliases."""
        folder = self._settings.models_dir
        if folder is None or not folder.is_dir():
            return []
        specs = self.specs
        assert self._specs is not None
        added = [
            s for s in discover_models(folder, task=self._settings.task) if s.alias not in specs
        ]
        for spec in added:
            self._specs[spec.alias] = spec
        return [spec.alias for spec in added]

    def _build_specs(self) -> dict[str, ModelSpec]:
        settings = self._settings
        specs = [parse_model_spec(text, task=settings.task) for text in settings.models]
        by_alias: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.alias in by_alias:
                raise ConfigError(
                    f"model alias {spec.alias!r} is used twice; name them with ALIAS=PATH"
                )
            by_alias[spec.alias] = spec
        if settings.models_dir is not None:
            for spec in discover_models(settings.models_dir, task=settings.task):
                if spec.alias in by_alias:
                    logger.warning(
                        "--models-dir entry %s is shadowed by --model %s", spec.source, spec.alias
                    )
                    continue
                by_alias[spec.alias] = spec
        elif not specs:
            from hfserve.runtime.demo import demo_specs

            by_alias = {spec.alias: spec for spec in demo_specs()}
        templates = parse_chat_templates(settings.chat_templates, list(by_alias))
        for alias, template in templates.items():
            by_alias[alias] = dataclasses.replace(by_alias[alias], chat_template=template)
        return by_alias

    def skill_name(self, spec: ModelSpec) -> str | None:
        """The name of the skill that will serve ``spec``, or ``None`` when it cannot be told
        before loading (a Hub id not downloaded yet, a folder the demo builds on first load)."""
        try:
            return self._registry.resolve(spec.source, spec.task).info.name
        except HfServeError:
            return None

    # --- state -----------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        """Aliases of the models in memory, least recently used first."""
        return self._cache.keys()

    def is_loaded(self, name: str) -> bool:
        """Whether the model called ``name`` is in memory."""
        try:
            alias = self.resolve_name(name).alias
        except ModelNotFoundError:
            return False
        return alias in self._cache

    def state(self, name: str) -> ModelState:
        """``loaded`` (in memory), ``loading`` (a load is running) or ``available``."""
        return self._state_of(self.resolve_name(name).alias)

    def states(self) -> tuple[tuple[str, ModelState], ...]:
        """Every served alias with its state, in serving order (what ``/v1/models`` lists)."""
        # One pass over the specs: per alias, ``state`` would copy the specs to resolve it.
        return tuple((alias, self._state_of(alias)) for alias in self.specs)

    def _state_of(self, alias: str) -> ModelState:
        if alias in self._cache:
            return "loaded"
        if alias in self._loading or alias in self._late:
            return "loading"
        return "available"

    def task_of(self, name: str) -> str | None:
        """The task a model serves: from the loaded model, ``--task``, or its local
        ``config.json`` (read once); ``None`` when that takes a load to know."""
        spec = self.resolve_name(name)
        model = self._cache.peek(spec.alias)
        if model is not None:
            return model.info.task
        if spec.task is not None:
            return spec.task
        if spec.alias not in self._tasks:
            task: str | None = None
            if Path(spec.source).is_dir():
                try:
                    task = self._registry.resolve(spec.source).info.task
                except HfServeError:
                    task = None
            self._tasks[spec.alias] = task
        return self._tasks[spec.alias]

    def breaker(self, name: str) -> CircuitBreaker:
        """The load breaker of a model (created on first use)."""
        alias = self.resolve_name(name).alias
        breaker = self._breakers.get(alias)
        if breaker is None:
            breaker = CircuitBreaker(
                failure_threshold=self._settings.breaker_failures,
                recovery_timeout=self._settings.breaker_recovery,
                clock=self._clock,
                name=f"model {alias}",
            )
            self._breakers[alias] = breaker
        return breaker

    @property
    def cache(self) -> ModelCache[str, LoadedModel]:
        """The model cache (for stats and metrics)."""
        return self._cache

    # --- loading ---------------------------------------------------------------------------

    async def get(self, name: str) -> LoadedModel:
        """The started model called ``name``, loading it on first use.

        Raises:
            ModelNotFoundError: no served model has that name.
            CircuitOpenError: its loads failed repeatedly; retry after ``retry_after``.
            ModelLoadError: loading failed (bad files, no skill for it, timeout, out of
                memory, ...); the message says why.
            UnavailableError: a load of it that timed out is still running; retry later.
            OverloadedError: it does not fit the cache next to the pinned models.
            ShuttingDownError: the loader is closed.
        """
        if self._closed:
            raise ShuttingDownError("the model loader is shut down")
        spec = self.resolve_name(name)
        await self.evict_idle()
        model = self._cache.get(spec.alias)
        if model is not None:
            return model
        task = self._loading.get(spec.alias)
        if task is None and spec.alias in self._late:
            raise UnavailableError(
                f"model {spec.alias!r} is still finishing a load that timed out; it is closed "
                "when that ends, then a new load can start",
                retry_after=5,
            )
        if task is None:
            # Ask the breaker before starting a load; joiners of a running load do not.
            self.breaker(spec.alias).allow()
            task = asyncio.create_task(self._load(spec), name=f"hfserve-load-{spec.alias}")
            self._loading[spec.alias] = task
            task.add_done_callback(self._forget_load)
        # Shielded: one impatient caller must not cancel a load others are waiting for.
        return await asyncio.shield(task)

    def _forget_load(self, task: asyncio.Task[LoadedModel]) -> None:
        for alias, running in list(self._loading.items()):
            if running is task:
                del self._loading[alias]

    async def preload(self) -> None:
        """Load every pinned model now (the server's startup), in order; ``--models-dir``
        models wait for their first request.

        Raises:
            HfServeError: the first model that fails to load.
        """
        for alias, spec in self.specs.items():
            if spec.pinned:
                await self.get(alias)

    def hold(self, model: LoadedModel) -> Callable[[], None]:
        """Mark ``model`` in use by one request until the returned ``release`` is called.

        The cache may still evict a held model (LRU, byte budget, idle TTL, ``evict``): it
        leaves the cache at once, so new requests load it afresh, but it is closed, and its
        memory given back, only after the last request holding it has released it. Without
        this a stream could fail halfway because another model's load pushed its model out.
        ``release`` is idempotent and must be called on the event loop.
        """
        key = id(model)
        self._holds[key] = self._holds.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._holds[key] - 1
            if left:
                self._holds[key] = left
                return
            del self._holds[key]
            retired = self._held_retired.pop(key, None)
            if retired is not None:
                self._retired.append(retired)
                closer = asyncio.get_running_loop().create_task(self._close_retired())
                self._closers.add(closer)
                closer.add_done_callback(self._closers.discard)

        return release

    def holds(self, model: LoadedModel) -> int:
        """How many requests hold ``model`` now (see :meth:`hold`)."""
        return self._holds.get(id(model), 0)

    async def evict(self, name: str) -> bool:
        """Unload a model (pinned or not) and free its memory; whether it was loaded.

        A model that requests still hold is closed when the last of them releases it.
        """
        alias = self.resolve_name(name).alias
        evicted = self._cache.evict(alias)
        await self._close_retired()
        return evicted

    async def evict_idle(self) -> list[str]:
        """Unload unpinned models idle for longer than ``model_idle_ttl``; their aliases."""
        gone = self._cache.evict_idle()
        await self._close_retired()
        return gone

    async def sweep_idle(self) -> None:
        """Unload idle models every quarter of ``model_idle_ttl`` until cancelled (a server
        that gets no requests must still let its idle models go)."""
        ttl = self._settings.model_idle_ttl
        if ttl <= 0:
            return
        while True:
            await asyncio.sleep(max(0.25, ttl / 4))
            await self.evict_idle()

    async def aclose(self) -> None:
        """Cancel loads in progress, unload every model and free its memory."""
        self._closed = True
        loads = list(self._loading.values())
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        self._cache.clear()
        # Shutting down: models still held are closed now (the server drained before this).
        self._retired += self._held_retired.values()
        self._held_retired.clear()
        await self._close_retired()
        # Late models that already arrived are being closed; threads still loading are
        # daemons whose result is closed (or dropped with the loop): shutdown does not wait.
        await asyncio.gather(*self._closers, return_exceptions=True)

    async def _load(self, spec: ModelSpec) -> LoadedModel:
        """Load, start and cache one model, recording the outcome on its breaker."""
        breaker = self.breaker(spec.alias)
        started = self._clock.now()
        try:
            model = await self._load_and_start(spec)
            try:
                self._cache.put(
                    spec.alias, model, size_bytes=model.memory_bytes(), pinned=spec.pinned
                )
            except BaseException:
                # It does not fit (OverloadedError): free it rather than leak it.
                await model.aclose()
                raise
        except asyncio.CancelledError:
            breaker.record_cancelled()
            raise
        except Exception as exc:
            breaker.record_failure()
            if self._observer is not None:
                self._observer.on_load_failure(spec.alias)
            if isinstance(exc, ModelLoadError | RetryableError):
                raise
            # Whatever stopped it (no skill for its config, a device gone), for the client
            # this model failed to load: 503 model_load_failed with the reason.
            message = (
                exc.message if isinstance(exc, HfServeError) else f"{type(exc).__name__}: {exc}"
            )
            raise ModelLoadError(f"cannot load model {spec.alias!r}: {message}") from exc
        finally:
            await self._close_retired()
        breaker.record_success()
        seconds = self._clock.now() - started
        logger.info("loaded model %s from %s in %.2fs", spec.alias, spec.source, seconds)
        if self._observer is not None:
            self._observer.on_load(spec.alias, seconds)
        return model

    async def _load_and_start(self, spec: ModelSpec) -> LoadedModel:
        choice = await self._device()
        timeout = self._settings.load_timeout
        thread = _in_daemon_thread(
            functools.partial(self._load_blocking, spec, choice), f"hfserve-load-{spec.alias}"
        )
        try:
            async with asyncio.timeout(timeout):
                # Shielded: the timeout or a cancel stops the waiting, not the thread's future.
                skill, model = await asyncio.shield(thread)
        except TimeoutError:
            self._abandon(spec.alias, thread)
            raise ModelLoadError(
                f"loading model {spec.alias!r} took longer than {timeout:g}s "
                "(raise load_timeout, HFSERVE_LOAD_TIMEOUT, for big models)"
            ) from None
        except asyncio.CancelledError:
            self._abandon(spec.alias, thread)
            raise
        try:
            await model.start()
        except BaseException as exc:
            await model.aclose()
            if isinstance(exc, HfServeError | asyncio.CancelledError):
                raise
            if isinstance(exc, Exception):
                raise ModelLoadError(
                    f"model {spec.alias!r} loaded but failed to start: {exc}"
                ) from exc
            raise
        logger.debug("model %s served by skill %s", spec.alias, skill.info.name)
        return model

    def _load_blocking(self, spec: ModelSpec, choice: DeviceChoice) -> tuple[Skill, LoadedModel]:
        """Build (demo), resolve the skill and load: everything that blocks, in one thread."""
        try:
            if spec.build is not None:
                spec.build(Path(spec.source))
            skill = self._registry.resolve(spec.source, spec.task)
            options = self._options
            if options.batch_observer is not None:
                # Batch metrics carry the alias, like every other per-model metric (a skill
                # knows its model only by the path or Hub id it loaded).
                observer = _AliasedObserver(options.batch_observer, spec.alias)
                options = dataclasses.replace(options, batch_observer=observer)
            if spec.chat_template is not None:
                options = dataclasses.replace(options, chat_template=_read_template(spec))
            model = skill.load(spec.source, choice.device, choice.dtype, options)
        except HfServeError:
            raise
        except Exception as exc:  # transformers/torch/plugins raise OSError, ValueError, ...
            raise ModelLoadError(
                f"cannot load model {spec.alias!r} from {spec.source}: {type(exc).__name__}: {exc}"
            ) from exc
        return skill, model

    def _abandon(self, alias: str, thread: asyncio.Future[tuple[Skill, LoadedModel]]) -> None:
        """Keep ``alias`` busy until its load thread ends, then close what it loaded."""
        self._late[alias] = thread
        thread.add_done_callback(functools.partial(self._close_late, alias))

    def _close_late(self, alias: str, thread: asyncio.Future[tuple[Skill, LoadedModel]]) -> None:
        if self._late.get(alias) is thread:
            del self._late[alias]
        if thread.cancelled() or thread.exception() is not None:
            return  # nothing was loaded (the failure was already reported as the timeout)
        _, model = thread.result()
        logger.warning("model %s finished loading after its load was abandoned; closing it", alias)
        closer = asyncio.get_running_loop().create_task(self._close_model(alias, model))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    async def _close_model(self, alias: str, model: LoadedModel) -> None:
        try:
            await model.aclose()
        except Exception:
            logger.exception("closing model %s failed", alias)
        del model
        await asyncio.to_thread(release_memory)

    async def _device(self) -> DeviceChoice:
        if self._hardware is None:
            from hfserve.hardware import probe

            self._hardware = await asyncio.to_thread(probe)
        hw = self._hardware
        return choose_device(
            self._settings.device,
            cuda_devices=hw.cuda_devices,
            mps_available=hw.mps_available,
            requested_dtype=self._settings.dtype,
        )

    # --- eviction --------------------------------------------------------------------------

    def _on_evict(self, alias: str, model: LoadedModel, reason: str) -> None:
        self._retired.append((alias, model, reason))

    async def _close_retired(self) -> None:
        """Close the models the cache evicted; a failing close is logged, not raised."""
        closed = False
        while self._retired:
            alias, model, reason = self._retired.pop(0)
            if id(model) in self._holds and not self._closed:
                logger.info(
                    "model %s left the cache (%s); it is unloaded once its %d request(s) in "
                    "flight finish",
                    alias,
                    reason,
                    self._holds[id(model)],
                )
                self._held_retired[id(model)] = (alias, model, reason)
                continue
            closed = True
            try:
                await model.aclose()
            except Exception:
                logger.exception("closing evicted model %s failed", alias)
            logger.info("unloaded model %s (%s)", alias, reason)
            if self._observer is not None:
                self._observer.on_evict(alias, reason)
        if closed:
            # The last references go with the loop variable: now the memory can go back.
            del model
            await asyncio.to_thread(release_memory)


def _read_template(spec: ModelSpec) -> str:
    """The text of ``spec``'s chat template file.

    Raises:
        ModelLoadError: the file cannot be read.
    """
    assert spec.chat_template is not None
    try:
        return spec.chat_template.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"cannot read the chat template of {spec.alias!r} from {spec.chat_template}: {exc}"
        ) from exc
