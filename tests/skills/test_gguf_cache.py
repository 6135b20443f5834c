"""The GGUF conversion cache: convert once, keyed by content, written atomically, reused after."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from hfserve.errors import ModelLoadError
from hfserve.skills import gguf_cache
from hfserve.skills.gguf_cache import (
    GGUF_CACHE_MARKER,
    cached_folder,
    content_hash,
    gguf_model_facts,
    materialize,
)
from tests.fixtures.tiny_models import TinyModels


def _refuse_conversion(*_: Any) -> None:
    raise AssertionError("the cached folder should have been used")


def test_content_hash_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    file = tmp_path / "m.gguf"
    file.write_bytes(b"one")
    root = tmp_path / "cache"
    first = content_hash(file, root)
    assert first == hashlib.sha256(b"one").hexdigest()
    index = json.loads((root / "hashes.json").read_text())
    assert index[str(file.resolve())]["sha256"] == first
    # Same path, size and mtime: the remembered hash, the file is not read again.
    monkeypatch.setattr(gguf_cache, "hashlib", None)  # hashing now would fail
    assert content_hash(file, root) == first
    monkeypatch.undo()
    # Same size, new content and mtime: hashed again.
    file.write_bytes(b"two")
    os.utime(file, ns=(1, 1))
    assert content_hash(file, root) == hashlib.sha256(b"two").hexdigest()


def test_content_hash_read_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        content_hash(tmp_path / "missing.gguf", tmp_path)
    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        content_hash(folder, tmp_path)


def test_content_hash_with_an_unwritable_cache(tmp_path: Path) -> None:
    file = tmp_path / "m.gguf"
    file.write_bytes(b"abc")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    # The index cannot be written; the hash is still right (and recomputed next time).
    assert content_hash(file, blocker / "cache") == content_hash(file, tmp_path / "ok")


def test_cached_folder_is_keyed_by_content_and_dtype(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    root = tmp_path / "cache"
    assert cached_folder(a, "auto", root) == cached_folder(b, "float32", root)
    assert cached_folder(a, "float16", root).name.endswith("-float16")
    assert cached_folder(a, "bfloat16", root).name.endswith("-bfloat16")
    assert cached_folder(a, "auto", root).name.endswith("-float32")


@pytest.mark.slow
def test_materialize_once_then_reuse(
    tiny_gguf: Path, tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path / "cache"
    folder = materialize(tiny_gguf, "auto", root)
    assert folder == cached_folder(tiny_gguf, "float32", root)
    marker = json.loads((folder / GGUF_CACHE_MARKER).read_text())
    assert (marker["architecture"], marker["source"]) == ("llama", str(tiny_gguf.resolve()))
    assert sorted(p.name for p in root.iterdir()) == sorted([folder.name, "hashes.json"])

    # The saved folder is the original model: same weights, tokenizer and chat template.
    original = AutoModelForCausalLM.from_pretrained(tiny_models.llama)
    converted = AutoModelForCausalLM.from_pretrained(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    want, got = original.state_dict(), converted.state_dict()
    assert set(want) == set(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    tok_a = AutoTokenizer.from_pretrained(tiny_models.llama)
    tok_b = AutoTokenizer.from_pretrained(folder)
    assert tok_b.chat_template == tok_a.chat_template
    text = "hello world, the quick brown fox"
    assert tok_b.encode(text) == tok_a.encode(text)

    # Every later call, and the skill lookup, use the folder and never touch the GGUF again.
    monkeypatch.setattr(gguf_cache, "_convert", _refuse_conversion)
    monkeypatch.setattr(gguf_cache, "read_gguf_info", _refuse_conversion)
    assert materialize(tiny_gguf, "float32", root) == folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    shutil.copytree(folder, tmp_path / "xdg" / "hfserve" / "gguf" / folder.name)
    assert gguf_model_facts(tiny_gguf) == (("LlamaForCausalLM",), "llama")


@pytest.mark.slow
def test_materialize_half_precision(tiny_gguf: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    folder = materialize(tiny_gguf, "float16", tmp_path)
    assert folder.name.endswith("-float16")
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        name = next(iter(fh.keys()))
        assert str(fh.get_tensor(name).dtype) == "torch.float16"


@pytest.mark.slow
def test_stale_conversion_is_replaced(tiny_gguf: Path, tmp_path: Path) -> None:
    target = cached_folder(tiny_gguf, "float32", tmp_path)
    target.mkdir(parents=True)
    (target / GGUF_CACHE_MARKER).write_text(json.dumps({"recipe": 0}))
    (target / "leftover").write_text("from an older recipe")
    assert materialize(tiny_gguf, "float32", tmp_path) == target
    assert not (target / "leftover").exists()
    assert (target / "model.safetensors").is_file()


def _fake_convert(path: Path, out: Path, dtype: str) -> None:
    (out / "config.json").write_text("{}")


def test_a_concurrent_conversion_wins(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_cache, "_convert", _fake_convert)
    target = cached_folder(tiny_gguf, "float32", tmp_path)

    def other_process_first(src: str, dst: str) -> None:
        shutil.copytree(src, dst)  # someone else's finished copy lands first
        raise OSError("Directory not empty")

    monkeypatch.setattr(gguf_cache.os, "replace", other_process_first)
    assert materialize(tiny_gguf, "float32", tmp_path) == target
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_is_a_load_error(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_cache, "_convert", _fake_convert)

    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_cache.os, "replace", no_space)
    with pytest.raises(ModelLoadError, match="cannot write the converted GGUF"):
        materialize(tiny_gguf, "float32", tmp_path / "cache")
    # Neither the staging folder nor the hash index's temporary file is left behind.
    assert list((tmp_path / "cache").iterdir()) == []


def test_transformers_failures_are_load_errors(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def broken(*_: Any, **__: Any) -> None:
        raise ValueError("GGUF model with architecture llama is not supported yet.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    with pytest.raises(ModelLoadError, match="transformers cannot load the GGUF file"):
        materialize(tiny_gguf, "float32", tmp_path)


def test_packed_weights_are_not_saved_as_dense() -> None:
    import torch

    model = torch.nn.Module()
    model.blocks = torch.nn.Parameter(torch.zeros(4, dtype=torch.uint8), requires_grad=False)
    with pytest.raises(ModelLoadError, match="kept GGUF blocks packed"):
        gguf_cache._forget_quantization(model)


@pytest.mark.slow
async def test_text_generation_skill_loads_a_gguf(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hfserve.skills.base import RuntimeOptions
    from hfserve.skills.text_generation import TextGenerationSkill

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = TextGenerationSkill().load(str(tiny_gguf), "cpu", "float32", RuntimeOptions())
    try:
        assert model.model_id == str(tiny_gguf)  # the name the user gave, not the cache folder
        assert (model.max_input_tokens, model.dtype) == (256, "float32")
        assert model.render_chat([{"role": "user", "content": "hi"}]).endswith("<|assistant|>")
    finally:
        await model.aclose()
    assert len(list((tmp_path / "hfserve" / "gguf").glob("*-float32"))) == 1
