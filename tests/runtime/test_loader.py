"""ModelLoader with fake skills: load once, cache, byte budget, pinning, breaker, timeouts."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from hfserve.core.breaker import BreakerState
from hfserve.core.clock import FakeClock
from hfserve.errors import (
    CircuitOpenError,
    ConfigError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
    ShuttingDownError,
    UnavailableError,
)
from hfserve.hardware import HardwareReport
from hfserve.runtime.loader import ModelLoader, _in_daemon_thread
from hfserve.runtime.specs import ModelSpec, parse_model_spec
from hfserve.settings import Settings
from hfserve.skills.base import RuntimeOptions, SkillInfo
from hfserve.skills.registry import SkillRegistry

CPU_ONLY = HardwareReport(
    cpu_model="test",
    cpu_cores_physical=1,
    cpu_cores_logical=1,
    ram_total_bytes=1 << 30,
    ram_available_bytes=1 << 30,
    platform="test",
    python="3.11",
    torch_version=None,
    cuda_available=False,
    cuda_version=None,
)


class FakeModel:
    def __init__(self, path: str, device: str, dtype: str, size: int, fail_start: bool) -> None:
        self.info = FakeSkill.info
        self.model_id, self.device, self.dtype = path, device, dtype
        self.size, self.fail_start = size, fail_start
        self.started = self.closed = False

    @property
    def max_input_tokens(self) -> int:
        return 8

    def memory_bytes(self) -> int:
        return self.size

    def count_tokens(self, text: str) -> int:
        return len(text)

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("worker would not start")
        self.started = True

    async def aclose(self) -> None:
        self.closed = True


class FakeSkill:
    info = SkillInfo(name="fake", task="embeddings", architectures=("FakeModel",), source="test")

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.fail: Exception | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.models: list[FakeModel] = []

    def load(self, model_path: str, device: str, dtype: str, options: RuntimeOptions) -> FakeModel:
        self.loads.append(model_path)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.fail is not None:
            raise self.fail
        config = json.loads((Path(model_path) / "config.json").read_text())
        model = FakeModel(
            model_path, device, dtype, config["size"], config.get("fail_start", False)
        )
        self.models.append(model)
        return model


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_load(self, model: str, seconds: float) -> None:
        self.events.append(("load", model))

    def on_evict(self, model: str, reason: str) -> None:
        self.events.append(("evict", f"{model}:{reason}"))

    def on_load_failure(self, model: str) -> None:
        self.events.append(("fail", model))


def _model(root: Path, name: str, size: int, **extra: object) -> str:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["FakeModel"], "size": size, **extra})
    )
    return str(folder)


def _loader(
    skill: FakeSkill, clock: FakeClock | None = None, **settings: object
) -> tuple[ModelLoader, Recorder]:
    recorder = Recorder()
    loader = ModelLoader(
        Settings(**settings),
        registry=SkillRegistry(include_builtins=False, skills=[skill]),
        clock=clock or FakeClock(),
        hardware=CPU_ONLY,
        observer=recorder,
    )
    return loader, recorder


def test_specs_aliases_default_and_unknown_names(tmp_path: Path) -> None:
    a = _model(tmp_path, "alpha", 10)
    loader, _ = _loader(FakeSkill(), models=[a, f"b={a}"])
    assert list(loader.specs) == ["alpha", "b"]
    assert loader.default_model == "alpha"
    assert loader.resolve_name(a).alias == "alpha"
    with pytest.raises(ModelNotFoundError, match="available: alpha, b"):
        loader.resolve_name("gamma")
    assert not loader.is_loaded("gamma")
    dup, _ = _loader(FakeSkill(), models=[a, a])
    with pytest.raises(ConfigError, match="used twice"):
        _ = dup.specs


async def test_get_loads_once_caches_and_reports(tmp_path: Path) -> None:
    skill = FakeSkill()
    loader, rec = _loader(skill, models=[_model(tmp_path, "m", 10)])
    model = await loader.get("m")
    assert isinstance(model, FakeModel) and model.started
    assert (model.device, model.dtype) == ("cpu", "float32")
    assert await loader.get("m") is model
    assert skill.loads == [model.model_id]
    assert loader.loaded() == ["m"] and loader.is_loaded("m")
    assert loader.cache.stats.hits == 1
    assert rec.events == [("load", "m")]
    assert await loader.evict("m") is True
    assert model.closed and loader.loaded() == []
    assert await loader.evict("m") is False
    assert rec.events[-1] == ("evict", "m:explicit")


async def test_concurrent_gets_of_a_cold_model_load_it_once(tmp_path: Path) -> None:
    skill = FakeSkill()
    skill.gate = threading.Event()
    loader, _ = _loader(skill, models=[_model(tmp_path, "m", 10)])
    callers = [asyncio.create_task(loader.get("m")) for _ in range(8)]
    await asyncio.to_thread(skill.entered.wait, 10)
    # One impatient caller leaving must not cancel the load the others share.
    callers[0].cancel()
    skill.gate.set()
    results = await asyncio.gather(*callers[1:])
    assert len(skill.loads) == 1
    assert all(r is results[0] for r in results)
    with pytest.raises(asyncio.CancelledError):
        await callers[0]


async def test_byte_budget_evicts_lru_and_pinned_survives(tmp_path: Path) -> None:
    skill = FakeSkill()
    pinned = _model(tmp_path, "pinned", 40)
    loader, rec = _loader(skill, models=[pinned], cache_memory=100)
    await loader.get("pinned")
    extra = [_model(tmp_path, n, 40) for n in ("x", "y")]
    for spec in _unpinned(extra):  # models added at runtime, not pinned
        loader.add_model(spec)
    x = await loader.get("x")
    y = await loader.get("y")  # 40 + 40 + 40 > 100: x (LRU, unpinned) goes
    assert x.closed and not y.closed
    assert loader.loaded() == ["pinned", "y"]
    assert loader.cache.is_pinned("pinned")
    assert ("evict", "x:bytes") in rec.events
    loader.add_model(_unpinned([_model(tmp_path, "big", 80)])[0])
    with pytest.raises(OverloadedError):
        await loader.get("big")  # cannot fit beside the pinned 40
    assert skill.models[-1].closed  # the model that did not fit was freed, not leaked


def _unpinned(paths: Sequence[str]) -> list[ModelSpec]:
    return [parse_model_spec(p, pinned=False) for p in paths]


async def test_failing_load_trips_breaker_and_recovers(tmp_path: Path) -> None:
    skill = FakeSkill()
    skill.fail = OSError("model.safetensors is corrupt")
    clock = FakeClock()
    loader, rec = _loader(
        skill, clock, models=[_model(tmp_path, "m", 10)], breaker_failures=2, breaker_recovery=30
    )
    for _ in range(2):
        with pytest.raises(
            ModelLoadError, match=r"cannot load model 'm'.*OSError: model\.safetensors is corrupt"
        ):
            await loader.get("m")
    with pytest.raises(CircuitOpenError) as refused:
        await loader.get("m")
    assert refused.value.retry_after == pytest.approx(30)
    assert len(skill.loads) == 2  # refused fast: no third load attempt
    assert rec.events.count(("fail", "m")) == 2
    clock.advance(31)
    skill.fail = None
    model = await loader.get("m")
    assert model.started and loader.breaker("m").state is BreakerState.CLOSED


async def test_a_model_no_skill_handles_fails_to_load_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "noconfig"
    folder.mkdir()
    loader, rec = _loader(FakeSkill(), models=[str(folder)], breaker_failures=1)
    # On demand or at start-up, for the client this is a model that fails to load (503).
    with pytest.raises(ModelLoadError, match=r"cannot load model 'noconfig': .*config\.json"):
        await loader.get("noconfig")
    assert rec.events == [("fail", "noconfig")]
    with pytest.raises(CircuitOpenError):
        await loader.get("noconfig")


async def test_start_failure_closes_the_model(tmp_path: Path) -> None:
    skill = FakeSkill()
    loader, _ = _loader(skill, models=[_model(tmp_path, "m", 10, fail_start=True)])
    with pytest.raises(ModelLoadError, match="failed to start: worker would not start"):
        await loader.get("m")
    assert skill.models[0].closed and loader.loaded() == []


async def test_load_timeout_is_a_model_load_error(tmp_path: Path) -> None:
    skill = FakeSkill()
    skill.gate = threading.Event()
    loader, _ = _loader(skill, models=[_model(tmp_path, "m", 10)], load_timeout=0.05)
    try:
        with pytest.raises(ModelLoadError, match=r"took longer than 0\.05s"):
            await loader.get("m")
    finally:
        skill.gate.set()


async def test_idle_models_are_unloaded_but_pinned_ones_stay(tmp_path: Path) -> None:
    skill = FakeSkill()
    clock = FakeClock()
    loader, _ = _loader(skill, clock, models=[_model(tmp_path, "p", 10)], model_idle_ttl=60)
    loader.add_model(_unpinned([_model(tmp_path, "u", 10)])[0])
    with pytest.raises(ConfigError, match="already served"):
        loader.add_model(_unpinned([str(tmp_path / "u")])[0])
    await loader.preload()
    u = await loader.get("u")
    clock.advance(61)
    assert await loader.evict_idle() == ["u"]
    assert u.closed and loader.loaded() == ["p"]


async def test_a_held_model_is_closed_after_its_last_request(tmp_path: Path) -> None:
    # A stream must not fail halfway because another model's load pushed its model out.
    skill = FakeSkill()
    clock = FakeClock()
    loader, rec = _loader(skill, clock, models=[], cache_memory=100, model_idle_ttl=60)
    for spec in _unpinned([_model(tmp_path, n, 60) for n in ("x", "y")]):
        loader.add_model(spec)
    x = await loader.get("x")
    first, second = loader.hold(x), loader.hold(x)
    assert loader.holds(x) == 2
    y = await loader.get("y")  # 60 + 60 > 100: x leaves the cache but is in use
    assert loader.loaded() == ["y"] and not x.closed
    assert ("evict", "x:bytes") not in rec.events
    first()
    first()  # a second call of the same release changes nothing
    await asyncio.sleep(0)
    assert not x.closed and loader.holds(x) == 1
    second()
    assert loader.holds(x) == 0
    await asyncio.gather(*loader._closers)
    assert x.closed and rec.events[-1] == ("evict", "x:bytes")
    # A model released before it is evicted closes at once; idle eviction defers the same way.
    loader.hold(y)()
    assert await loader.evict("y") and y.closed
    z = await loader.get("x")
    release = loader.hold(z)
    clock.advance(61)
    assert await loader.evict_idle() == ["x"]
    assert not z.closed
    release()
    await asyncio.gather(*loader._closers)
    assert z.closed


async def test_aclose_closes_held_models_too(tmp_path: Path) -> None:
    skill = FakeSkill()
    loader, _ = _loader(skill, models=[])
    loader.add_model(_unpinned([_model(tmp_path, "x", 10)])[0])
    x = await loader.get("x")
    release = loader.hold(x)
    assert await loader.evict("x") and not x.closed
    await loader.aclose()  # shutdown: the server drained first; nothing waits any longer
    assert x.closed
    release()  # late releases of a closed loader are harmless
    assert loader.holds(x) == 0


async def test_aclose_unloads_everything_and_refuses_new_work(tmp_path: Path) -> None:
    skill = FakeSkill()
    loader, _ = _loader(skill, models=[_model(tmp_path, "m", 10), _model(tmp_path, "n", 10)])
    await loader.preload()
    skill.gate = threading.Event()
    await loader.aclose()
    assert all(m.closed for m in skill.models) and loader.loaded() == []
    with pytest.raises(ShuttingDownError):
        await loader.get("m")
    skill.gate.set()


async def test_aclose_cancels_a_load_in_progress(tmp_path: Path) -> None:
    skill = FakeSkill()
    skill.gate = threading.Event()
    loader, _ = _loader(skill, models=[_model(tmp_path, "m", 10)])
    caller = asyncio.create_task(loader.get("m"))
    await asyncio.to_thread(skill.entered.wait, 10)
    await loader.aclose()
    skill.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert loader.breaker("m").state is BreakerState.CLOSED


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` on the loop until true, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_timed_out_load_blocks_the_alias_then_is_closed(tmp_path: Path) -> None:
    skill = FakeSkill()
    skill.gate = threading.Event()
    loader, rec = _loader(skill, models=[_model(tmp_path, "m", 10)], load_timeout=0.05)
    with pytest.raises(ModelLoadError, match=r"took longer than 0\.05s"):
        await loader.get("m")
    # The thread still loads: the alias is busy, and no second load starts beside it.
    assert loader.state("m") == "loading"
    with pytest.raises(UnavailableError, match="still finishing a load that timed out"):
        await loader.get("m")
    assert len(skill.loads) == 1
    skill.gate.set()
    await _until(lambda: loader.state("m") == "available" and not loader._closers)
    late = skill.models[0]
    assert late.closed and not late.started and loader.loaded() == []
    assert rec.events == [("fail", "m")]  # the late model is never served nor counted loaded
    skill.gate = None
    fresh = await loader.get("m")
    assert fresh is not late and fresh.started and len(skill.loads) == 2


async def test_a_timed_out_load_that_then_fails_frees_the_alias(tmp_path: Path) -> None:
    skill = FakeSkill()
    skill.gate = threading.Event()
    skill.fail = OSError("disk gone")
    loader, _ = _loader(skill, models=[_model(tmp_path, "m", 10)], load_timeout=0.05)
    with pytest.raises(ModelLoadError, match="took longer"):
        await loader.get("m")
    skill.gate.set()
    await _until(lambda: loader.state("m") == "available")
    assert skill.models == [] and not loader._closers


async def test_aclose_does_not_wait_for_a_stuck_load_thread(tmp_path: Path) -> None:
    skill = FakeSkill()
    skill.gate = threading.Event()
    loader, _ = _loader(skill, models=[_model(tmp_path, "m", 10)])
    caller = asyncio.create_task(loader.get("m"))
    await asyncio.to_thread(skill.entered.wait, 10)
    async with asyncio.timeout(5):  # returns at once although the thread is still loading
        await loader.aclose()
    assert any(t.name == "hfserve-load-m" and t.daemon for t in threading.enumerate())
    with pytest.raises(asyncio.CancelledError):
        await caller
    skill.gate.set()
    await _until(lambda: not loader._late and not loader._closers)
    assert skill.models[0].closed


def test_a_process_exits_while_a_load_thread_is_stuck(tmp_path: Path) -> None:
    # asyncio.run joins the loop's executor threads at the end: with to_thread this hung
    # forever; the load's daemon thread must not hold the process up.
    model = _model(tmp_path, "m", 10)
    script = f"""
import asyncio, threading
from hfserve.runtime.loader import ModelLoader, _in_daemon_thread
from hfserve.settings import Settings
from hfserve.skills.registry import SkillRegistry
from tests.runtime.test_loader import CPU_ONLY, FakeSkill

skill = FakeSkill()
skill.gate = threading.Event()  # never set: the load never ends

async def main():
    loader = ModelLoader(Settings(models=[{model!r}], load_timeout=0.2), hardware=CPU_ONLY,
                         registry=SkillRegistry(include_builtins=False, skills=[skill]))
    try:
        await loader.get("m")
    except Exception as exc:
        print("refused:", exc)
    await loader.aclose()

asyncio.run(main())
print("exited")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "refused: loading model 'm' took longer than 0.2s" in done.stdout
    assert done.stdout.rstrip().endswith("exited")


def test_a_thread_finishing_after_its_loop_closed_is_dropped() -> None:
    gate = threading.Event()

    async def start() -> asyncio.Future[int]:
        return _in_daemon_thread(lambda: gate.wait(10) and 1, "hfserve-test-late")

    loop = asyncio.new_event_loop()
    future = loop.run_until_complete(start())
    loop.close()
    gate.set()
    thread = next(t for t in threading.enumerate() if t.name == "hfserve-test-late")
    thread.join(10)
    assert not thread.is_alive() and not future.done()


def _models_dir(root: Path, *names: str) -> Path:
    folder = root / "models"
    folder.mkdir()
    for name in names:
        _model(folder, name, 10)
    (folder / "notes").mkdir()  # no config.json: not a model
    (folder / "README.md").write_text("not a model")
    return folder


async def test_models_dir_models_load_on_demand_and_are_evicted(tmp_path: Path) -> None:
    skill = FakeSkill()
    pinned = _model(tmp_path, "p", 10)
    folder = _models_dir(tmp_path, "a", "b", "p")
    loader, rec = _loader(skill, models=[pinned], models_dir=folder, max_loaded_models=2)
    specs = loader.specs
    assert list(specs) == ["p", "a", "b"]  # the --model "p" shadows the folder's "p"
    assert specs["p"].pinned and not specs["a"].pinned
    assert specs["a"].source == str((folder / "a").resolve())
    await loader.preload()
    assert loader.loaded() == ["p"] and loader.state("a") == "available"
    assert loader.task_of("a") == "embeddings"  # from its config.json, before any load
    for name in ("a", "b", "a"):
        await loader.get(name)
        assert loader.state(name) == "loaded"
    assert loader.loaded() == ["p", "a"]
    assert ("evict", "a:lru") in rec.events and ("evict", "b:lru") in rec.events
    assert [m.closed for m in skill.models] == [False, True, True, False]
    assert loader.task_of("a") == "embeddings"  # now from the loaded model


async def test_models_dir_rescan_offers_models_added_later(tmp_path: Path) -> None:
    folder = _models_dir(tmp_path, "a")
    loader, _ = _loader(FakeSkill(), models_dir=folder)
    assert list(loader.specs) == ["a"] and loader.default_model == "a"
    assert loader.rescan() == []
    _model(folder, "late", 10)
    assert (await loader.get("late")).model_id.endswith("late")
    assert list(loader.specs) == ["a", "late"]
    with pytest.raises(ModelNotFoundError, match="available: a, late"):
        loader.resolve_name("nope")
    shutil.rmtree(folder)
    assert loader.rescan() == []


async def test_task_of_is_none_until_a_load_tells(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "x.gguf").write_bytes(b"GGUF")
    broken = folder / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["Unknown"]}))
    loader, _ = _loader(FakeSkill(), models_dir=folder)
    assert list(loader.specs) == ["broken", "x"]
    assert loader.task_of("x") is None and loader.task_of("broken") is None
    forced, _ = _loader(FakeSkill(), models_dir=folder, task="embeddings")
    assert forced.task_of("x") == "embeddings"


async def test_idle_sweeper_unloads_without_requests(tmp_path: Path) -> None:
    clock = FakeClock()
    folder = _models_dir(tmp_path, "a")
    loader, rec = _loader(FakeSkill(), clock, models_dir=folder, model_idle_ttl=1)
    await loader.get("a")
    sweeper = asyncio.create_task(loader.sweep_idle())
    clock.advance(2)
    await _until(lambda: loader.loaded() == [])
    assert ("evict", "a:idle") in rec.events
    sweeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweeper
    off, _ = _loader(FakeSkill(), models_dir=folder)
    await off.sweep_idle()  # no TTL: returns at once


class TemplateSkill(FakeSkill):
    """Records the chat template each load was given."""

    def __init__(self) -> None:
        super().__init__()
        self.templates: list[str | None] = []

    def load(self, model_path: str, device: str, dtype: str, options: RuntimeOptions) -> FakeModel:
        self.templates.append(options.chat_template)
        return super().load(model_path, device, dtype, options)


async def test_a_chat_template_file_reaches_its_model_only(tmp_path: Path) -> None:
    template = tmp_path / "tools.jinja"
    template.write_text("{{ tools }}", encoding="utf-8")
    skill = TemplateSkill()
    a, b = _model(tmp_path, "a", 1), _model(tmp_path, "b", 1)
    loader, _ = _loader(skill, models=[a, b], chat_templates=[f"a = {template}"])
    assert loader.specs["a"].chat_template == template and loader.specs["b"].chat_template is None
    await loader.get("a")
    await loader.get("b")
    assert skill.templates == ["{{ tools }}", None]


@pytest.mark.parametrize(
    ("item", "message"),
    [("a", "use ALIAS=FILE"), ("=x", "use ALIAS=FILE"), ("c=x", "not served"), ("a=x,a=y", "two")],
)
def test_bad_chat_template_items_are_config_errors(tmp_path: Path, item: str, message: str) -> None:
    loader, _ = _loader(FakeSkill(), models=[_model(tmp_path, "a", 1)], chat_templates=item)
    with pytest.raises(ConfigError, match=message):
        _ = loader.specs


async def test_an_unreadable_chat_template_fails_the_load(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jinja"
    loader, _ = _loader(
        FakeSkill(), models=[_model(tmp_path, "a", 1)], chat_templates=[f"a={missing}"]
    )
    with pytest.raises(ModelLoadError, match="cannot read the chat template of 'a'"):
        await loader.get("a")
