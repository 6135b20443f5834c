"""``hfserve skills`` and ``hfserve models inspect`` through the real CLI app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfserve.cli.main import app
from tests.fixtures.tiny_models import TinyModels

runner = CliRunner()


def test_skills_list_table_and_json() -> None:
    result = runner.invoke(app, ["skills", "list"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name in ("text-generation", "embeddings", "text-classification"):
        assert name in result.output
    data = json.loads(runner.invoke(app, ["skills", "list", "--json"]).stdout)
    assert [d["name"] for d in data] == [
        "text-generation",
        "embeddings",
        "text-classification",
        "image-text-to-text",
    ]


def test_skills_list_shows_plugins_and_reports_broken_ones(echo_plugin: Path) -> None:
    # A real process: the plugin is found through PYTHONPATH and importlib.metadata.
    out = subprocess.run(
        [sys.executable, "-m", "hfserve", "skills", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    echo = next(d for d in data if d["name"] == "echo")
    assert echo["source"] == "hfserve-echo-skill"
    assert "broken-import" in out.stderr and "not-a-skill" in out.stderr
    table = runner.invoke(app, ["skills", "list"], env={"COLUMNS": "160"})
    assert "echo" in table.stdout and "hfserve-echo-skill" in table.stdout


def test_skills_show_and_search() -> None:
    shown = runner.invoke(app, ["skills", "show", "embeddings"], env={"COLUMNS": "160"})
    assert shown.exit_code == 0 and "/v1/embeddings" in shown.stdout
    as_json = json.loads(runner.invoke(app, ["skills", "show", "embeddings", "--json"]).stdout)
    assert as_json["task"] == "embeddings"
    missing = runner.invoke(app, ["skills", "show", "nope"])
    assert missing.exit_code != 0
    found = json.loads(runner.invoke(app, ["skills", "search", "chat", "--json"]).stdout)
    assert [d["name"] for d in found] == ["text-generation", "image-text-to-text"]
    by_arch = runner.invoke(
        app,
        ["skills", "search", "--architecture", "BertForSequenceClassification"],
        env={"COLUMNS": "160"},
    )
    assert "text-classification" in by_arch.stdout
    none = runner.invoke(
        app, ["skills", "search", "speech", "--task", "embeddings", "--hardware", "cpu"]
    )
    assert "no skill matches" in none.stdout


def test_unknown_skill_exits_with_the_not_found_code() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hfserve", "skills", "show", "nope"], capture_output=True, text=True
    )
    assert out.returncode == 4
    assert "no skill named 'nope'" in out.stderr


def test_skills_commands_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from hfserve.cli.main import main\n"
        "try:\n    main(['skills', 'list', '--json'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_models_inspect_estimates_then_measures(tiny_models: TinyModels) -> None:
    result = runner.invoke(
        app, ["models", "inspect", str(tiny_models.bert_cls), "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["skill"] == "text-classification" and data["device"] == "cpu"
    assert data["dtype"] == "float32" and data["estimate_basis"] == "safetensors headers"
    # The safetensors estimate is exact for parameters; buffers (position ids) come on top.
    assert 0 < data["estimated_memory_bytes"] <= data["memory_bytes"]
    assert data["memory_bytes"] - data["estimated_memory_bytes"] < 0.05 * data["memory_bytes"]
    assert data["max_input_tokens"] == 64
    table = runner.invoke(
        app, ["models", "inspect", str(tiny_models.bert), "--no-load"], env={"COLUMNS": "160"}
    )
    assert table.exit_code == 0 and "embeddings" in table.stdout and "measured" not in table.stdout
    loaded = runner.invoke(
        app,
        ["models", "inspect", str(tiny_models.gpt2), "--task", "embeddings"],
        env={"COLUMNS": "160"},
    )
    assert loaded.exit_code == 0, loaded.output
    assert "measured memory" in loaded.stdout


def test_models_inspect_estimates_without_weights(tmp_path: Path) -> None:
    from hfserve.runtime.inspection import estimate_memory

    config = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "vocab_size": 100,
        "intermediate_size": 128,
    }
    est = estimate_memory(None, config, "float16")
    assert est.method == "config.json (rough)"
    assert est.parameters == 100 * 64 + 2 * (4 * 64 * 64 + 2 * 64 * 128)
    assert est.bytes == est.parameters * 2
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 400)
    assert estimate_memory(tmp_path, {}, "float32").parameters == 100
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    result = runner.invoke(app, ["models", "inspect", str(bad), "--json", "--no-load"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["estimate_basis"] == "config.json (rough)"
    failed = runner.invoke(app, ["models", "inspect", str(bad)])
    assert failed.exit_code != 0
