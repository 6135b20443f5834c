"""``ModelLoader``: model name -> spec -> skill -> device -> load -> cache, behind a breaker.

One loader serves every route. A cold model is loaded once however many requests ask for it
at the same time; a model whose load keeps failing is refused fast (``CircuitOpenError``) until
its breaker's recovery timeout passes; models leave the cache by LRU, byte budget or idle TTL
(never the pinned ones named in ``--model``) and are closed, which frees their memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Protocol

from hfserve.core.batcher import BatchObserver
from hfserve.core.breaker import CircuitBreaker
from hfserve.core.clock import Clock, MonotonicClock
from hfserve.core.model_cache import ModelCache
from hfserve.errors import (
    ConfigError,
    HfServeError,
    ModelLoadError,
    ModelNotFoundError,
    ShuttingDownError,
)
from hfserve.hardware import DeviceChoice, HardwareReport, choose_device
from hfserve.runtime.specs import ModelSpec, parse_chat_templates, parse_model_spec
from hfserve.settings import Settings
from hfserve.skills.base import LoadedModel, RuntimeOptions, Skill
from hfserve.skills.registry import SkillRegistry

__all__ = ["LoaderObserver", "ModelLoader"]

logger = logging.getLogger(__name__)


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
        trust_remote_code=settings.trust_remote_code,
        batch_observer=batch_observer,
    )


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
        # Models the cache let go of, waiting for ``aclose`` (the cache's callback is sync).
        self._retired: list[tuple[str, LoadedModel, str]] = []
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

        Raises:
            ModelNotFoundError: no served model has that name; the message lists them.
        """
        specs = self.specs
        if name in specs:
            return specs[name]
        for spec in specs.values():
            if name == spec.source:
                return spec
        available = ", ".join(specs)
        raise ModelNotFoundError(f"model {name!r} is not served here; available: {available}")

    def _build_specs(self) -> dict[str, ModelSpec]:
        settings = self._settings
        if settings.models:
            specs = [parse_model_spec(text, task=settings.task) for text in settings.models]
        else:
            from hfserve.runtime.demo import demo_specs

            specs = demo_specs()
        by_alias: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.alias in by_alias:
                raise ConfigError(
                    f"model alias {spec.alias!r} is used twice; name them with ALIAS=PATH"
                )
            by_alias[spec.alias] = spec
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
            ModelLoadError: loading failed (bad files, timeout, out of memory, ...).
            SkillNotFoundError: no skill handles the model.
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
        """Load every served model now (the server's startup), in order.

        Raises:
            HfServeError: the first model that fails to load.
        """
        for alias in self.specs:
            await self.get(alias)

    async def evict(self, name: str) -> bool:
        """Unload a model (pinned or not) and free its memory; whether it was loaded."""
        alias = self.resolve_name(name).alias
        evicted = self._cache.evict(alias)
        await self._close_retired()
        return evicted

    async def evict_idle(self) -> list[str]:
        """Unload unpinned models idle for longer than ``model_idle_ttl``; their aliases."""
        gone = self._cache.evict_idle()
        await self._close_retired()
        return gone

    async def aclose(self) -> None:
        """Cancel loads in progress, unload every model and free its memory."""
        self._closed = True
        loads = list(self._loading.values())
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        self._cache.clear()
        await self._close_retired()

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
        except Exception:
            breaker.record_failure()
            if self._observer is not None:
                self._observer.on_load_failure(spec.alias)
            raise
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
        try:
            async with asyncio.timeout(timeout):
                skill, model = await asyncio.to_thread(self._load_blocking, spec, choice)
        except TimeoutError:
            raise ModelLoadError(
                f"loading model {spec.alias!r} from {spec.source} took longer than {timeout:g}s "
                "(raise --load-timeout for big models)"
            ) from None
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
        while self._retired:
            alias, model, reason = self._retired.pop(0)
            try:
                await model.aclose()
            except Exception:
                logger.exception("closing evicted model %s failed", alias)
            logger.info("unloaded model %s (%s)", alias, reason)
            if self._observer is not None:
                self._observer.on_evict(alias, reason)


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
