"""docs/skills.md stays in step with the built-in skills the registry serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hfserve.skills.base import SkillInfo
from hfserve.skills.registry import SkillRegistry

DOC = Path(__file__).resolve().parents[2] / "docs" / "skills.md"
BUILTINS = SkillRegistry(include_builtins=True).list_skills()


def _sections(text: str) -> dict[str, str]:
    """Each ``## `name` `` section's body, by skill name."""
    parts = re.split(r"^## `([^`]+)`\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _items(section: str, label: str) -> list[str]:
    """The backquoted items of one ``- **Label:**`` line (it may wrap)."""
    match = re.search(rf"^- \*\*{label}:\*\*(.*?)(?=^- \*\*|\Z)", section, flags=re.M | re.S)
    assert match is not None, f"no {label} line"
    return re.findall(r"`([^`]+)`", match.group(1))


def test_every_builtin_skill_has_a_section_and_nothing_else_does() -> None:
    names = [info.name for info in BUILTINS if info.source == "builtin"]
    assert names and list(_sections(DOC.read_text())) == names


@pytest.mark.parametrize("info", BUILTINS, ids=lambda info: info.name)
def test_a_section_lists_exactly_the_skills_metadata(info: SkillInfo) -> None:
    section = _sections(DOC.read_text())[info.name]
    assert _items(section, "Task") == [info.task]
    assert _items(section, "Architectures") == list(info.architectures)
    assert _items(section, "Model types") == list(info.model_types)
    assert _items(section, "Endpoints") == list(info.endpoints)
    hardware = re.search(r"^- \*\*Hardware:\*\* (.+)$", section, flags=re.M)
    assert hardware is not None and hardware.group(1).split(", ") == list(info.hardware)
    for heading in ("Parameters", "Limits"):
        assert f"- **{heading}:**" in section


def test_the_matching_rules_name_every_way_a_skill_is_chosen() -> None:
    text = DOC.read_text()
    for rule in ("`--task`", "modules.json", "`architectures`", "`model_type`"):
        assert rule in text


def test_a_changed_architecture_list_is_caught() -> None:
    # The check above must fail on drift: a section that lost one architecture.
    info = next(i for i in BUILTINS if i.name == "embeddings")
    section = _sections(DOC.read_text())["embeddings"].replace("`NomicBertModel`,", "")
    assert _items(section, "Architectures") != list(info.architectures)
