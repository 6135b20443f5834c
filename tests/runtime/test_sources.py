"""Start-up checks of model sources and devices: one clear line, without waiting on the Hub."""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from hfserve import hardware
from hfserve.errors import ConfigError, ModelLoadError
from hfserve.runtime import sources
from hfserve.runtime.sources import check_device, check_source, check_startup, hub_hint
from hfserve.settings import Settings


def _raise(exc_type: type[Exception]) -> object:
    def fake(repo_id: str, *, timeout: float) -> None:
        assert timeout == sources.HUB_TIMEOUT
        raise exc_type.__new__(exc_type)

    return fake


def test_existing_paths_pass_and_mistyped_ones_say_no_such_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_source(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for typo in ("./no-such-folder", "/no/such/folder", "~/no-such-hfserve-x", "a/b/c", "models/x"):
        with pytest.raises(ConfigError, match=f"^no such folder: {re.escape(typo)}$"):
            check_source(typo)


def test_hub_ids_offline_get_the_hint_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        check_source("some-org/some-model")
    assert str(err.value) == hub_hint("some-org/some-model")
    assert "offline? set HF_HUB_OFFLINE=1 and use a local folder" in str(err.value)


def test_hub_answers_are_translated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "model_info", _raise(RepositoryNotFoundError))
    with pytest.raises(ModelLoadError, match="no such folder or Hugging Face Hub model: 'o/m'"):
        check_source("o/m")
    monkeypatch.setattr(huggingface_hub, "model_info", _raise(GatedRepoError))
    with pytest.raises(ModelLoadError, match="'o/m' is gated"):
        check_source("o/m")
    monkeypatch.setattr(huggingface_hub, "model_info", _raise(TimeoutError))
    with pytest.raises(ModelLoadError, match="cannot reach the Hugging Face Hub for 'o/m'"):
        check_source("o/m")
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, *, timeout: object())
    check_source("o/m")  # reachable: fine


def test_a_cached_hub_id_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/c/config")
    monkeypatch.setattr(huggingface_hub, "model_info", _raise(TimeoutError))
    check_source("o/m")


def test_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    check_device("cpu")
    check_device(" AUTO ")
    # This machine's torch, whatever it is, reporting no accelerator at all.
    monkeypatch.setattr(hardware, "_torch_facts", lambda: ("2", False, None, [], False))
    with pytest.raises(ConfigError, match=r"^no CUDA device: --device cuda needs one"):
        check_device("cuda")
    with pytest.raises(ConfigError, match="MPS is not available"):
        check_device("mps")


def test_check_startup_covers_models_and_models_dir(tmp_path: Path) -> None:
    check_startup(Settings(models=[f"x={tmp_path}"], models_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"no such folder: \./nope"):
        check_startup(Settings(models=["x=./nope"]))
    with pytest.raises(ConfigError, match=r"no such folder: .*missing \(--models-dir\)"):
        check_startup(Settings(models_dir=tmp_path / "missing"))
