"""SkillRegistry: built-ins, entry-point plugins, resolution from config.json, search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hfserve.errors import SkillNotFoundError
from hfserve.skills.base import RuntimeOptions, SkillInfo
from hfserve.skills.registry import SkillRegistry, read_model_facts
from tests.fixtures.tiny_models import TinyModels


def _folder(tmp_path: Path, name: str, config: dict[str, object], st: bool = False) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if st:
        (folder / "modules.json").write_text("[]", encoding="utf-8")
    return folder


class _FakeSkill:
    def __init__(
        self, name: str, task: str, archs: tuple[str, ...] = (), types: tuple[str, ...] = ()
    ) -> None:
        self.info = SkillInfo(
            name=name, task=task, architectures=archs, model_types=types, source="test"
        )

    def load(self, model_path: str, device: str, dtype: str, options: RuntimeOptions) -> object:
        raise NotImplementedError


def test_builtins_are_listed_in_priority_order() -> None:
    registry = SkillRegistry()
    names = [info.name for info in registry.list_skills()]
    assert names == ["text-generation", "embeddings", "text-classification", "image-text-to-text"]
    assert {info.source for info in registry.list_skills()} == {"builtin"}
    assert registry.tasks() == [
        "embeddings",
        "image-text-to-text",
        "text-classification",
        "text-generation",
    ]
    assert registry.errors == []


def test_get_returns_the_skill_and_unknown_names_list_what_exists() -> None:
    registry = SkillRegistry()
    assert registry.get("embeddings").info.task == "embeddings"
    with pytest.raises(
        SkillNotFoundError, match=r"no skill named 'nope'.*embeddings \(embeddings\)"
    ):
        registry.get("nope")


def test_resolve_tiny_models_by_architecture(tiny_models: TinyModels) -> None:
    registry = SkillRegistry()
    assert registry.resolve(str(tiny_models.gpt2)).info.name == "text-generation"
    assert registry.resolve(str(tiny_models.llama)).info.name == "text-generation"
    assert registry.resolve(str(tiny_models.bert)).info.name == "embeddings"
    assert registry.resolve(str(tiny_models.bert_cls)).info.name == "text-classification"


def test_sentence_transformers_folder_is_embeddings_whatever_its_architecture(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path, "st", {"architectures": ["Qwen2ForCausalLM"]}, st=True)
    assert SkillRegistry().resolve(str(folder)).info.name == "embeddings"


def test_specific_pattern_beats_generic_and_model_type_is_a_fallback(tmp_path: Path) -> None:
    registry = SkillRegistry()
    masked = _folder(tmp_path, "m", {"architectures": ["RobertaForMaskedLM"]})
    assert registry.resolve(str(masked)).info.name == "embeddings"
    by_type = _folder(tmp_path, "t", {"model_type": "mpnet"})
    assert registry.resolve(str(by_type)).info.name == "embeddings"
    extra = _FakeSkill("bloom-special", "text-generation", ("BloomForCausalLM",))
    registry = SkillRegistry(skills=[extra])
    bloom = _folder(tmp_path, "b", {"architectures": ["BloomForCausalLM"]})
    # An exact architecture name is more specific than the built-in "*ForCausalLM" pattern.
    assert registry.resolve(str(bloom)).info.name == "bloom-special"
    # The built-in also names GPT2LMHeadModel exactly: on a tie the added skill wins.
    gpt2 = _folder(tmp_path, "g", {"architectures": ["GPT2LMHeadModel"]})
    tie = SkillRegistry(
        skills=[_FakeSkill("gpt2-special", "text-generation", ("GPT2LMHeadModel",))]
    )
    assert tie.resolve(str(gpt2)).info.name == "gpt2-special"


def test_explicit_task_or_skill_name_wins(tiny_models: TinyModels) -> None:
    registry = SkillRegistry()
    assert registry.resolve(str(tiny_models.gpt2), task="embeddings").info.name == "embeddings"
    assert registry.resolve(str(tiny_models.bert), task="text-classification").info.name == (
        "text-classification"
    )
    with pytest.raises(SkillNotFoundError, match=r"no skill for task 'speech'.*tasks: embeddings"):
        registry.resolve(str(tiny_models.bert), task="speech")


def test_task_shared_by_several_skills_is_settled_by_the_config(tmp_path: Path) -> None:
    registry = SkillRegistry(skills=[_FakeSkill("echo", "embeddings", ("EchoModel",))])
    echo = _folder(tmp_path, "e", {"architectures": ["EchoModel"]})
    assert registry.resolve(str(echo), task="embeddings").info.name == "echo"
    # No config to settle it: the first skill of the task (the built-in) is used.
    bare = tmp_path / "bare"
    bare.mkdir()
    assert registry.resolve(str(bare), task="embeddings").info.name == "embeddings"


def test_unmatched_model_lists_skills_and_tasks(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path,
        "w",
        {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper"},
    )
    with pytest.raises(SkillNotFoundError) as info:
        SkillRegistry().resolve(str(folder))
    message = str(info.value)
    assert "WhisperForConditionalGeneration" in message and "whisper" in message
    assert "text-generation (text-generation)" in message and "--task" in message


def test_folder_without_config_and_unknown_hub_id_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(SkillNotFoundError, match=r"no readable config\.json"):
        SkillRegistry().resolve(str(tmp_path))
    with pytest.raises(SkillNotFoundError, match="not a folder, and not a Hub model"):
        read_model_facts("no-such-org/no-such-model-xyz")


def test_search_filters_combine() -> None:
    registry = SkillRegistry()
    assert [i.name for i in registry.search("chat")] == ["text-generation", "image-text-to-text"]
    assert [i.name for i in registry.search(task="embeddings")] == ["embeddings"]
    assert [i.name for i in registry.search(architecture="LlamaForCausalLM")] == ["text-generation"]
    assert [i.name for i in registry.search(architecture="BertForSequenceClassification")] == [
        "text-classification"
    ]
    assert len(registry.search(hardware="CUDA")) == 4
    assert registry.search(hardware="tpu") == []
    assert registry.search("chat", task="embeddings") == []


def test_plugin_is_discovered_with_its_distribution_as_source(echo_plugin: Path) -> None:
    registry = SkillRegistry()
    echo = next(i for i in registry.list_skills() if i.name == "echo")
    assert echo.source == "hfserve-echo-skill"
    assert echo.task == "embeddings"
    assert [i.name for i in registry.search(hardware="cpu")][-1] == "echo"
    assert [i.name for i in registry.search("plugin tests")] == ["echo"]


def test_broken_plugins_are_reported_not_raised(echo_plugin: Path) -> None:
    registry = SkillRegistry()
    names = [i.name for i in registry.list_skills()]
    assert "echo" in names
    errors = {e.entry_point.split(" ")[0]: e for e in registry.errors}
    assert set(errors) == {"broken-import", "not-a-skill"}
    assert "ModuleNotFoundError" in errors["broken-import"].message
    assert "is not a skill" in errors["not-a-skill"].message
    assert errors["not-a-skill"].distribution == "hfserve-echo-skill"
    assert errors["not-a-skill"].to_dict()["distribution"] == "hfserve-echo-skill"


def test_plugin_name_clash_with_a_builtin_is_reported(echo_plugin: Path) -> None:
    registry = SkillRegistry(skills=[_FakeSkill("echo", "embeddings")])
    assert [i.source for i in registry.list_skills() if i.name == "echo"] == ["test"]
    assert any("already taken" in e.message for e in registry.errors)


def test_plugin_given_as_instance_or_failing_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import hfserve.skills.registry as reg

    instance = _FakeSkill("inst", "embeddings")

    def boom() -> object:
        raise RuntimeError("factory exploded")

    points = {
        "inst": instance,
        "boom": boom,
    }

    class _EP(EntryPoint):
        def load(self) -> object:
            return points[self.name]

    eps = [_EP("inst", "x:inst", "hfserve.skills"), _EP("boom", "x:boom", "hfserve.skills")]
    monkeypatch.setattr(reg, "entry_points", lambda group: eps)
    registry = SkillRegistry(include_builtins=False)
    assert [i.name for i in registry.list_skills()] == ["inst"]
    assert registry.get("inst") is instance
    assert registry.list_skills()[0].source == "plugin"
    (error,) = registry.errors
    assert error.distribution == "unknown" and "factory exploded" in error.message


def test_broken_builtin_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import hfserve.skills.registry as reg

    monkeypatch.setattr(reg, "BUILTIN_SKILLS", ("hfserve.skills.nope:Skill", "uuid:uuid4"))
    registry = SkillRegistry()
    assert registry.list_skills() == []
    messages = [e.message for e in registry.errors]
    assert "ModuleNotFoundError" in messages[0]
    assert "is not a skill" in messages[1]


def test_listing_skills_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "from hfserve.skills.registry import SkillRegistry\n"
        "r = SkillRegistry(); r.list_skills(); r.search('x')\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
