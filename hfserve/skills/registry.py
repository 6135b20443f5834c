"""``SkillRegistry``: the built-in skills plus third-party skills from entry points.

Third parties register a skill under the entry-point group ``hfserve.skills``; the entry point
names a ``Skill`` instance, or a class/factory that returns one when called without arguments.
A plugin that fails to import or yields the wrong thing is recorded in ``errors`` and skipped:
one broken package must never stop the server or ``hfserve skills list``.

Nothing here imports torch: skill modules import it inside ``load``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import importlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from hfserve.errors import SkillNotFoundError
from hfserve.skills.base import TASK_EMBEDDINGS, Skill, SkillInfo
from hfserve.skills.catalog import BUILTIN_SKILLS

__all__ = ["ENTRY_POINT_GROUP", "ModelFacts", "PluginError", "SkillRegistry", "read_model_facts"]

ENTRY_POINT_GROUP = "hfserve.skills"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginError:
    """A third-party skill that could not be registered, and why."""

    entry_point: str
    distribution: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelFacts:
    """What ``config.json`` (and the folder) say about a model: enough to pick its skill."""

    architectures: tuple[str, ...] = ()
    model_type: str | None = None
    sentence_transformers: bool = False


def read_model_facts(model_path_or_id: str) -> ModelFacts:
    """Read architectures, model type and sentence-transformers-ness of a folder or Hub id.

    A folder is read directly; anything else is treated as a Hub id and resolved through
    ``transformers.AutoConfig`` (the local Hub cache when offline).

    Raises:
        SkillNotFoundError: the folder has no readable ``config.json`` or the id cannot be found.
    """
    folder = Path(model_path_or_id)
    if folder.is_dir():
        config_file = folder / "config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SkillNotFoundError(
                f"cannot tell which skill serves {model_path_or_id}: "
                f"no readable config.json ({exc}); pass a task explicitly"
            ) from exc
        is_st = (folder / "modules.json").is_file()
    else:
        config, is_st = _hub_config(model_path_or_id)
    raw_archs = config.get("architectures") or ()
    model_type = config.get("model_type")
    return ModelFacts(
        architectures=tuple(str(a) for a in raw_archs),
        model_type=str(model_type) if model_type else None,
        sentence_transformers=is_st,
    )


def _hub_config(model_id: str) -> tuple[dict[str, Any], bool]:
    """The config dict of a Hub model and whether it ships ``modules.json``."""
    try:
        from huggingface_hub import hf_hub_download
        from transformers import AutoConfig

        config: dict[str, Any] = AutoConfig.from_pretrained(model_id).to_dict()
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors here
        raise SkillNotFoundError(
            f"cannot read the configuration of {model_id!r} (not a folder, and not a Hub "
            f"model available here): {exc}"
        ) from exc
    try:
        hf_hub_download(repo_id=model_id, filename="modules.json")
    except Exception:
        return config, False
    return config, True


def _pattern_matches(patterns: Iterable[str], value: str) -> tuple[bool, int]:
    """Whether any pattern matches ``value``; the specificity of the best (exact = highest)."""
    best = -1
    for pattern in patterns:
        if pattern == value:
            return True, 10_000
        if fnmatch.fnmatchcase(value, pattern):
            best = max(best, len(pattern.replace("*", "").replace("?", "")))
    return best >= 0, best


@dataclass(frozen=True)
class _Entry:
    info: SkillInfo
    skill: Skill


class SkillRegistry:
    """Built-in and third-party skills: list, look up, search, and resolve a model to a skill."""

    def __init__(
        self,
        *,
        group: str = ENTRY_POINT_GROUP,
        include_builtins: bool = True,
        skills: Iterable[Skill] = (),
    ) -> None:
        self._group = group
        self._include_builtins = include_builtins
        self._extra = list(skills)
        self._entries: dict[str, _Entry] | None = None
        self._errors: list[PluginError] = []
        self._lock = threading.Lock()

    @property
    def errors(self) -> list[PluginError]:
        """Third-party skills that failed to register (discovery runs on first use)."""
        self._discover()
        return list(self._errors)

    def list_skills(self) -> list[SkillInfo]:
        """Every registered skill's metadata: built-ins first, then plugins by name."""
        return [entry.info for entry in self._discover().values()]

    def get(self, name: str) -> Skill:
        """The skill called ``name``.

        Raises:
            SkillNotFoundError: no skill has that name.
        """
        entry = self._discover().get(name)
        if entry is None:
            raise SkillNotFoundError(f"no skill named {name!r}; {self._available()}")
        return entry.skill

    def resolve(self, model_path_or_id: str, task: str | None = None) -> Skill:
        """Pick the skill for a model: explicit ``task`` (or skill name) first, else from
        ``config.json`` - a sentence-transformers folder is embeddings, then architectures
        (exact names before patterns, the more specific pattern first), then ``model_type``.

        Raises:
            SkillNotFoundError: nothing matches; the message lists the skills and tasks.
        """
        entries = self._discover()
        if task is not None:
            return self._resolve_task(model_path_or_id, task, entries)
        facts = read_model_facts(model_path_or_id)
        name = self._match(facts, list(entries.values()))
        if name is None:
            archs = ", ".join(facts.architectures) or "none"
            raise SkillNotFoundError(
                f"no skill handles {model_path_or_id} (architectures: {archs}; model_type: "
                f"{facts.model_type or 'none'}); {self._available()}; "
                "pass --task to choose one"
            )
        return self.get(name)

    def search(
        self,
        text: str | None = None,
        *,
        task: str | None = None,
        architecture: str | None = None,
        hardware: str | None = None,
    ) -> list[SkillInfo]:
        """Skills matching every given filter (case-insensitive).

        ``text`` matches a substring of the name, task, description, source or an
        architecture; ``architecture`` matches the skill's architecture patterns.
        """
        found: list[SkillInfo] = []
        for info in self.list_skills():
            if task is not None and info.task.lower() != task.lower():
                continue
            if hardware is not None and hardware.lower() not in {h.lower() for h in info.hardware}:
                continue
            if (
                architecture is not None
                and not _pattern_matches(info.architectures, architecture)[0]
            ):
                continue
            if text is not None and not _text_matches(info, text):
                continue
            found.append(info)
        return found

    def tasks(self) -> list[str]:
        """The distinct tasks of the registered skills."""
        return sorted({info.task for info in self.list_skills()})

    # --- internals -----------------------------------------------------------------------

    def _available(self) -> str:
        skills = ", ".join(f"{i.name} ({i.task})" for i in self.list_skills())
        return f"skills: {skills}; tasks: {', '.join(self.tasks())}"

    def _resolve_task(self, model: str, task: str, entries: dict[str, _Entry]) -> Skill:
        candidates = [e for e in entries.values() if e.info.task == task]
        if not candidates and task in entries:
            return self.get(task)  # a skill name given as the task
        if not candidates:
            raise SkillNotFoundError(f"no skill for task {task!r}; {self._available()}")
        if len(candidates) > 1:
            # Several skills share the task: let the model's config pick among them.
            try:
                name = self._match(read_model_facts(model), candidates)
            except SkillNotFoundError:
                name = None
            if name is not None:
                return self.get(name)
        return self.get(candidates[0].info.name)

    @staticmethod
    def _match(facts: ModelFacts, entries: list[_Entry]) -> str | None:
        if facts.sentence_transformers:
            for entry in entries:
                if entry.info.task == TASK_EMBEDDINGS:
                    return entry.info.name
        best: tuple[int, int, str] | None = None
        for arch in facts.architectures:
            for entry in entries:
                ok, score = _pattern_matches(entry.info.architectures, arch)
                # On a tie a plugin beats a built-in: installing it was a deliberate choice.
                rank = (score, 0 if entry.info.source == "builtin" else 1)
                if ok and (best is None or rank > best[:2]):
                    best = (*rank, entry.info.name)
        if best is not None:
            return best[2]
        if facts.model_type:
            for entry in entries:
                if _pattern_matches(entry.info.model_types, facts.model_type)[0]:
                    return entry.info.name
        return None

    def _discover(self) -> dict[str, _Entry]:
        if self._entries is not None:
            return self._entries
        with self._lock:
            if self._entries is None:
                self._entries = self._build()
        return self._entries

    def _build(self) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        if self._include_builtins:
            for ref in BUILTIN_SKILLS:
                skill = self._import_builtin(ref)
                if skill is not None:
                    entries[skill.info.name] = _Entry(info=skill.info, skill=skill)
        for skill in self._extra:
            entries[skill.info.name] = _Entry(info=skill.info, skill=skill)
        plugins: list[tuple[str, _Entry]] = []
        for ep in sorted(entry_points(group=self._group), key=lambda e: e.name):
            entry = self._load_plugin(ep)
            if entry is None:
                continue
            if entry.info.name in entries or any(entry.info.name == n for n, _ in plugins):
                self._record(ep, f"skill name {entry.info.name!r} is already taken; ignored")
                continue
            plugins.append((entry.info.name, entry))
        entries.update(plugins)
        return entries

    def _load_plugin(self, ep: EntryPoint) -> _Entry | None:
        try:
            obj = ep.load()
            skill = obj if _is_skill(obj) else _call_factory(obj)
        except Exception as exc:  # a plugin may raise anything while importing
            self._record(ep, f"{type(exc).__name__}: {exc}")
            return None
        if skill is None:
            self._record(
                ep,
                f"{ep.value} is not a skill: expected an object with `info: SkillInfo` and "
                "`load()`, or a class/factory returning one",
            )
            return None
        source = ep.dist.name if ep.dist is not None else "plugin"
        info = dataclasses.replace(skill.info, source=source)
        with contextlib.suppress(AttributeError):
            # So the models it loads (which copy ``skill.info``) say where they come from too.
            skill.info = info
        return _Entry(info=info, skill=skill)

    def _record(self, ep: EntryPoint, message: str) -> None:
        dist = ep.dist.name if ep.dist is not None else "unknown"
        error = PluginError(
            entry_point=f"{ep.name} = {ep.value}", distribution=dist, message=message
        )
        logger.warning("skill plugin %s (%s) skipped: %s", error.entry_point, dist, message)
        self._errors.append(error)

    def _import_builtin(self, ref: str) -> Skill | None:
        module_name, _, attr = ref.partition(":")
        try:
            skill = _call_factory(getattr(importlib.import_module(module_name), attr))
        except Exception as exc:  # a broken install must not take the other skills down
            skill = None
            message = f"{type(exc).__name__}: {exc}"
        else:
            message = f"{ref} is not a skill"
        if skill is None:
            error = PluginError(entry_point=ref, distribution="hfserve", message=message)
            logger.warning("built-in skill %s unavailable: %s", ref, message)
            self._errors.append(error)
        return skill


def _is_skill(obj: object) -> bool:
    return (
        not isinstance(obj, type)
        and isinstance(getattr(obj, "info", None), SkillInfo)
        and callable(getattr(obj, "load", None))
    )


def _call_factory(obj: object) -> Skill | None:
    if not callable(obj):
        return None
    factory: Callable[[], object] = obj
    made = factory()
    if _is_skill(made):
        skill: Skill = made  # type: ignore[assignment]
        return skill
    return None


def _text_matches(info: SkillInfo, text: str) -> bool:
    needle = text.lower()
    haystack = [info.name, info.task, info.description, info.source, *info.architectures]
    return any(needle in field.lower() for field in haystack)
