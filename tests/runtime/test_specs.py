"""Model specs: ``--model`` parsing and the one "is this a model" rule ``--models-dir`` uses."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hfserve.errors import ConfigError
from hfserve.runtime.specs import discover_models, is_model_path, parse_model_spec


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    return folder


def test_is_model_path_accepts_model_folders_and_gguf_files(tmp_path: Path) -> None:
    assert is_model_path(_folder(tmp_path, "m"))
    (tmp_path / "empty").mkdir()
    assert not is_model_path(tmp_path / "empty")
    (tmp_path / "q.GGUF").write_bytes(b"GGUF")
    assert is_model_path(tmp_path / "q.GGUF")
    (tmp_path / "w.bin").write_bytes(b"")
    assert not is_model_path(tmp_path / "w.bin")
    assert not is_model_path(tmp_path / "missing")


def test_discover_models_names_entries_and_skips_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _folder(tmp_path, "b-model")
    _folder(tmp_path, ".hidden")
    _folder(tmp_path, "dup")
    (tmp_path / "dup.gguf").write_bytes(b"GGUF")  # shadowed by the folder "dup"
    (tmp_path / "small.gguf").write_bytes(b"GGUF")
    (tmp_path / "notes.txt").write_text("hi")
    with caplog.at_level(logging.WARNING):
        specs = discover_models(tmp_path, task="embeddings")
    assert [s.alias for s in specs] == ["b-model", "dup", "small"]
    assert all(not s.pinned and s.task == "embeddings" for s in specs)
    assert specs[2].source == str((tmp_path / "small.gguf").resolve())
    assert "dup.gguf is shadowed" in caplog.text


def test_discover_models_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such folder: .*nope \(--models-dir\)"):
        discover_models(tmp_path / "nope")


def test_parse_model_spec_aliases(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "tiny")
    assert parse_model_spec(str(folder)).alias == "tiny"
    assert parse_model_spec("Qwen/Qwen2.5-0.5B/").alias == "Qwen/Qwen2.5-0.5B"
    (tmp_path / "q4.gguf").write_bytes(b"GGUF")
    assert parse_model_spec(str(tmp_path / "q4.gguf")).alias == "q4"
    spec = parse_model_spec(f"x={folder}", pinned=False)
    assert (spec.alias, spec.source, spec.pinned) == ("x", str(folder), False)
    assert parse_model_spec("h=~/m").source == str(Path("~/m").expanduser())
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_model_spec(str(odd)).alias == "a=b"
    for bad in ("", "=x", "x="):
        with pytest.raises(ConfigError, match="bad model"):
            parse_model_spec(bad)
