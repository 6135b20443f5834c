"""The hardware probe and the device/dtype choice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hfserve import hardware
from hfserve.cli.main import app
from hfserve.errors import ConfigError
from hfserve.hardware import CudaDevice, choose_device, probe

A100 = CudaDevice(0, "A100", 80 * 2**30, 70 * 2**30, "8.0", True)
T4 = CudaDevice(1, "T4", 16 * 2**30, 15 * 2**30, "7.5", False)


def test_auto_prefers_cuda_with_most_free_memory_then_mps_then_cpu() -> None:
    choice = choose_device("auto", cuda_devices=[T4, A100], mps_available=True)
    assert (choice.device, choice.dtype) == ("cuda:0", "bfloat16")
    assert "A100" in choice.reason
    assert choose_device("auto", cuda_devices=[], mps_available=True).device == "mps"
    cpu = choose_device("auto", cuda_devices=[], mps_available=False)
    assert (cpu.device, cpu.dtype, cpu.reason) == ("cpu", "float32", "no CUDA or MPS device found")


def test_explicit_devices_and_dtypes() -> None:
    assert choose_device("cuda:1", cuda_devices=[A100, T4], mps_available=False).dtype == "float16"
    assert choose_device("cuda", cuda_devices=[A100], mps_available=False).device == "cuda:0"
    assert choose_device("CPU", cuda_devices=[A100], mps_available=False).device == "cpu"
    assert choose_device("mps", cuda_devices=[], mps_available=True).dtype == "float16"
    forced = choose_device("cpu", cuda_devices=[], mps_available=False, requested_dtype="bfloat16")
    assert forced.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ("mps", "MPS is not available"),
        ("cuda:3", "has 1 CUDA device"),
        ("cuda:x", "use cuda:N"),
        ("tpu", "unknown device"),
    ],
)
def test_bad_device_requests_are_config_errors(requested: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_device(requested, cuda_devices=[A100], mps_available=False)


def test_probe_reports_this_machine() -> None:
    report = probe()
    assert report.cpu_cores_logical >= 1
    assert report.ram_total_bytes >= report.ram_available_bytes > 0
    assert report.torch_version is not None  # torch is a dependency
    assert report.choice.device in {"cpu", "mps"} or report.choice.device.startswith("cuda")
    assert json.loads(json.dumps(report.to_dict()))["choice"]["device"] == report.choice.device


def test_probe_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware.importlib.util, "find_spec", lambda name: None)
    report = probe()
    assert report.torch_version is None
    assert report.cuda_devices == []
    assert report.choice.device == "cpu"


def test_cpu_model_falls_back_when_proc_cpuinfo_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", missing)
    assert hardware._cpu_model()


def _fake_report(monkeypatch: pytest.MonkeyPatch, devices: list[CudaDevice]) -> None:
    monkeypatch.setattr(
        hardware,
        "_torch_facts",
        lambda: ("2.13.0", bool(devices), "12.4" if devices else None, devices, False),
    )


def test_cli_table_shows_devices_and_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_report(monkeypatch, [A100])
    result = CliRunner().invoke(app, ["hardware"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "A100" in result.output and "cuda:0" in result.output and "bfloat16" in result.output


def test_cli_table_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_report(monkeypatch, [])
    result = CliRunner().invoke(app, ["hardware"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "not available" in result.output and "cpu" in result.output


def test_cli_json(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_report(monkeypatch, [A100])
    result = CliRunner().invoke(app, ["hardware", "--json", "--device", "cuda:0"])
    data = json.loads(result.output)
    assert data["choice"] == {"device": "cuda:0", "dtype": "bfloat16", "reason": "requested"}
    assert data["cuda_devices"][0]["name"] == "A100"


def test_cli_bad_device_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hfserve.cli.main import main

    _fake_report(monkeypatch, [])
    with pytest.raises(SystemExit) as exit_info:
        main(["hardware", "--device", "cuda:2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no CUDA device: --device cuda:2") and err.count("\n") == 1


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2, limits.cpu: 1500m
        ({"cpu.max": "max 100000\n"}, None),  # v2, unlimited
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, none
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),  # no cgroup files at all (macOS, a bare VM)
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    assert hardware.cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


def test_usable_cpus_is_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    import os

    affinity = len(os.sched_getaffinity(0))
    assert hardware.usable_cpus(_cgroup(tmp_path / "none", {})) == affinity
    # A pod limited to 0.5 CPU still gets one thread; a quota above the affinity changes nothing.
    assert hardware.usable_cpus(_cgroup(tmp_path / "half", {"cpu.max": "50000 100000"})) == 1
    big = _cgroup(tmp_path / "big", {"cpu.max": f"{(affinity + 8) * 100000} 100000"})
    assert hardware.usable_cpus(big) == affinity


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(1, 1, 1), (2, 1, 2), (16, 1, 16), (8, 2, 4), (8, 3, 2), (2, 4, 1)],
)
def test_auto_torch_threads_share_the_cpus_among_workers(
    cpus: int, workers: int, threads: int
) -> None:
    assert hardware.auto_torch_threads(cpus, workers) == threads
