"""``hfserve serve`` and ``hfserve models inspect`` refuse what cannot load: at once, in one line.

Each test runs the CLI as a user does, in a subprocess, and bounds it well below the ~27 s of
Hub retries a user used to wait through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HINT = "(offline? set HF_HUB_OFFLINE=1 and use a local folder)"


def _hfserve(
    *args: str, cwd: Path, timeout: float = 20, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = os.environ | {"HF_HUB_OFFLINE": "1"} | env
    return subprocess.run(
        [sys.executable, "-m", "hfserve", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and not done.stdout, (done.stdout, done.stderr)
    return lines[0]


def test_serve_a_missing_folder(tmp_path: Path) -> None:
    done = _hfserve("serve", "--model", "x=./no-such-folder", "--port", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done) == "error: no such folder: ./no-such-folder"


def test_serve_an_unreachable_hub_id(tmp_path: Path) -> None:
    done = _hfserve("serve", "--model", "some-org/some-model", "--port", "0", cwd=tmp_path)
    assert done.returncode == 5
    line = _one_line(done)
    assert line == f"error: cannot reach the Hugging Face Hub for 'some-org/some-model' {HINT}"


def test_serve_cuda_without_cuda(tmp_path: Path) -> None:
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on GPU machines too.
    done = _hfserve(
        "serve",
        "--device",
        "cuda",
        "--port",
        "0",
        cwd=tmp_path,
        timeout=60,
        CUDA_VISIBLE_DEVICES="",
    )
    assert done.returncode == 2
    assert _one_line(done).startswith("error: no CUDA device")


def test_serve_a_missing_models_dir(tmp_path: Path) -> None:
    done = _hfserve("serve", "--models-dir", "nope", "--port", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done) == "error: no such folder: nope (--models-dir)"


def test_serve_exits_when_a_model_fails_to_preload(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"architectures": ["NoSuchArchitecture"]}))
    done = _hfserve(
        "serve",
        "--model",
        "x=./broken",
        "--port",
        "0",
        "--keys-file",
        "k.json",
        cwd=tmp_path,
        timeout=90,
    )
    assert done.returncode == 5, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot load model 'x': no skill handles ./broken")
    assert "NoSuchArchitecture" in last


def test_inspect_a_mistyped_path(tmp_path: Path) -> None:
    done = _hfserve("models", "inspect", "./tiny-gtp2", cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done) == "error: no such folder: ./tiny-gtp2"


def test_inspect_a_hub_id_offline(tmp_path: Path) -> None:
    done = _hfserve("models", "inspect", "Qwen/Qwen2.5-0.5B-Instruct", cwd=tmp_path)
    assert done.returncode == 5
    assert _one_line(done) == (
        f"error: cannot reach the Hugging Face Hub for 'Qwen/Qwen2.5-0.5B-Instruct' {HINT}"
    )
