"""GGUF detection and header reading: which path is a GGUF, and what its header says."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hfserve.errors import ModelLoadError
from hfserve.skills import gguf_files
from hfserve.skills.gguf_files import (
    causal_lm_architecture,
    check_supported,
    find_gguf,
    model_type_of,
    read_gguf_info,
    supported_architectures,
)
from hfserve.skills.registry import SkillRegistry, read_model_facts
from tests.fixtures.tiny_gguf import write_foreign_gguf
from tests.fixtures.tiny_models import TinyModels


def test_find_gguf_file_and_folder(tmp_path: Path) -> None:
    file = tmp_path / "Model.Q4_0.GGUF"
    file.write_bytes(b"x")
    assert find_gguf(str(file)) == file
    assert find_gguf(str(tmp_path / "missing.gguf")) == tmp_path / "missing.gguf"
    assert find_gguf(str(tmp_path)) == file  # a folder holding exactly one
    (tmp_path / "notes.txt").write_text("not a model")
    assert find_gguf(str(tmp_path)) == file


def test_find_gguf_ignores_ordinary_models(tmp_path: Path, tiny_models: TinyModels) -> None:
    assert find_gguf(str(tiny_models.llama)) is None
    assert find_gguf("Qwen/Qwen2.5-0.5B-Instruct") is None
    assert find_gguf(str(tmp_path)) is None  # an empty folder
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "a.gguf").write_bytes(b"x")
    assert find_gguf(str(tmp_path)) is None  # config.json: a transformers folder
    odd = tmp_path / "folder.gguf"
    odd.mkdir()
    assert find_gguf(str(odd)) is None


def test_find_gguf_refuses_to_guess(tmp_path: Path) -> None:
    for name in ("b.gguf", "a.gguf"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\)"):
        find_gguf(str(tmp_path))


def test_read_gguf_info(tiny_gguf: Path, tiny_models: TinyModels) -> None:
    from safetensors.numpy import load_file

    info = read_gguf_info(tiny_gguf)
    assert (info.architecture, info.name, info.context_length) == ("llama", "tiny-llama", 256)
    # No general.file_type: named after the type holding the bytes.
    assert info.quantization == "F32"
    assert list(info.tensor_types) == ["F32"]
    expected = sum(a.size for a in load_file(tiny_models.llama / "model.safetensors").values())
    assert info.parameters == expected
    assert info.tensor_bytes == 4 * expected
    assert info.file_bytes == tiny_gguf.stat().st_size > info.tensor_bytes


def test_read_gguf_info_file_type(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    out = tmp_path / "typed.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_1))
    writer.add_tensor("token_embd.weight", np.zeros((2, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_gguf_info(out)
    assert (info.quantization, info.tensor_types, info.context_length) == ("Q4_1", {"F16": 1}, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable GGUF file"),
        (b"hello, not gguf at all", "magic invalid"),
    ],
)
def test_read_gguf_info_rejects_damage(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        read_gguf_info(bad)


def test_read_gguf_info_truncated_and_missing(tmp_path: Path, tiny_gguf: Path) -> None:
    data = tiny_gguf.read_bytes()
    for cut in (len(data) // 2, 40):
        bad = tmp_path / f"cut-{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="truncated or damaged"):
            read_gguf_info(bad)
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_gguf_info(tmp_path / "nowhere.gguf")


def test_read_gguf_info_needs_an_architecture(tmp_path: Path) -> None:
    import gguf

    out = tmp_path / "vocab-only.gguf"
    writer = gguf.GGUFWriter(str(out), "")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"no general\.architecture"):
        read_gguf_info(out)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    info = read_gguf_info(write_foreign_gguf(tmp_path / "foreign.gguf"))
    with pytest.raises(ModelLoadError, match=r"architecture 'hfserve-test-arch' \(foreign\.gguf\)"):
        check_supported(info)
    # The skill lookup says the same, before anything is dequantized.
    with pytest.raises(ModelLoadError, match="hfserve-test-arch"):
        SkillRegistry().resolve(str(info.path))


def test_supported_architectures_and_model_types() -> None:
    supported = supported_architectures()
    assert {"llama", "qwen2", "gpt2"} <= supported
    assert not {"general", "tokenizer"} & supported
    assert model_type_of("qwen2moe") == "qwen2_moe"
    assert model_type_of("llama") == "llama"
    assert causal_lm_architecture("llama") == "LlamaForCausalLM"
    assert causal_lm_architecture("t5") is None


def test_renamed_architectures_are_supported(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = read_gguf_info(tiny_gguf)
    monkeypatch.setattr(gguf_files, "supported_architectures", lambda: frozenset({"qwen2_moe"}))
    check_supported(info.__class__(**{**info.__dict__, "architecture": "qwen2moe"}))


def test_registry_reads_gguf_facts(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tiny_gguf.parent / "no-cache-yet"))
    facts = read_model_facts(str(tiny_gguf))
    assert (facts.architectures, facts.model_type) == (("LlamaForCausalLM",), "llama")
    assert SkillRegistry().resolve(str(tiny_gguf)).info.name == "text-generation"


def test_registry_gguf_without_a_causal_class(tmp_path: Path) -> None:
    # A T5 GGUF: transformers reads it, but no causal-LM skill serves it.
    source = write_foreign_gguf(tmp_path / "t5.gguf", architecture="t5")
    facts = read_model_facts(str(source))
    assert (facts.architectures, facts.model_type) == ((), "t5")


def test_folder_with_one_gguf_resolves(tmp_path: Path, tiny_gguf: Path) -> None:
    shutil.copy(tiny_gguf, tmp_path / "only.gguf")
    assert read_model_facts(str(tmp_path)).architectures == ("LlamaForCausalLM",)


def test_gguf_memory_is_priced_dequantized(tiny_gguf: Path) -> None:
    from hfserve.runtime.inspection import estimate_gguf_memory

    info = read_gguf_info(tiny_gguf)
    for dtype, width in (("float32", 4), ("float16", 2), ("bfloat16", 2), ("auto", 4)):
        estimate = estimate_gguf_memory(info, dtype)
        assert (estimate.bytes, estimate.parameters) == (width * info.parameters, info.parameters)
        assert estimate.method == "GGUF tensor table"
