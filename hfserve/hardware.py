"""What this machine has, and which device and dtype hfserve picks for a model."""

from __future__ import annotations

import importlib.util
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from hfserve.errors import ConfigError

__all__ = [
    "CudaDevice",
    "DeviceChoice",
    "HardwareReport",
    "auto_torch_threads",
    "choose_device",
    "probe",
    "usable_cpus",
]

_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device and its memory."""

    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int | None
    capability: str
    bf16_supported: bool


@dataclass(frozen=True)
class DeviceChoice:
    """The device and dtype hfserve uses, and why."""

    device: str
    dtype: str
    reason: str


@dataclass(frozen=True)
class HardwareReport:
    """A snapshot of the machine: CPU, RAM, accelerators, torch, and the device choice."""

    cpu_model: str
    cpu_cores_physical: int | None
    cpu_cores_logical: int
    ram_total_bytes: int
    ram_available_bytes: int
    platform: str
    python: str
    torch_version: str | None
    cuda_available: bool
    cuda_version: str | None
    cuda_devices: list[CudaDevice] = field(default_factory=list)
    mps_available: bool = False
    choice: DeviceChoice = DeviceChoice("cpu", "float32", "no accelerator found")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _torch_facts() -> tuple[str | None, bool, str | None, list[CudaDevice], bool]:
    if importlib.util.find_spec("torch") is None:
        return None, False, None, [], False
    import torch

    devices: list[CudaDevice] = []
    cuda = bool(torch.cuda.is_available())
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            free: int | None
            try:
                free, _total = torch.cuda.mem_get_info(index)
            except RuntimeError:
                free = None
            devices.append(
                CudaDevice(
                    index=index,
                    name=str(props.name),
                    total_memory_bytes=int(props.total_memory),
                    free_memory_bytes=free,
                    capability=f"{props.major}.{props.minor}",
                    bf16_supported=props.major >= 8,
                )
            )
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return str(torch.__version__), cuda, torch.version.cuda, devices, mps


def choose_device(
    requested: str,
    *,
    cuda_devices: list[CudaDevice],
    mps_available: bool,
    requested_dtype: str = "auto",
) -> DeviceChoice:
    """Pick a device (CUDA > MPS > CPU unless ``requested`` says otherwise) and a dtype.

    Raises:
        ConfigError: the requested device is not present or not understood.
    """
    req = requested.strip().lower()
    if req == "auto":
        if cuda_devices:
            best = max(cuda_devices, key=lambda d: d.free_memory_bytes or d.total_memory_bytes)
            device, reason = f"cuda:{best.index}", f"CUDA device {best.index} ({best.name}) found"
        elif mps_available:
            device, reason = "mps", "Apple MPS found"
        else:
            device, reason = "cpu", "no CUDA or MPS device found"
    elif req == "cpu":
        device, reason = "cpu", "requested"
    elif req == "mps":
        if not mps_available:
            raise ConfigError("device 'mps' requested but MPS is not available on this machine")
        device, reason = "mps", "requested"
    elif req == "cuda" or req.startswith("cuda:"):
        index = 0 if req == "cuda" else _parse_index(req)
        if not cuda_devices:
            raise ConfigError(
                f"no CUDA device: --device {requested} needs one (use --device auto or cpu)"
            )
        if not any(d.index == index for d in cuda_devices):
            raise ConfigError(
                f"device {requested!r} requested but this machine has "
                f"{len(cuda_devices)} CUDA device(s)"
            )
        device, reason = f"cuda:{index}", "requested"
    else:
        raise ConfigError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps")
    return DeviceChoice(device, _choose_dtype(device, requested_dtype, cuda_devices), reason)


def _parse_index(req: str) -> int:
    try:
        return int(req.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"bad CUDA device {req!r}: use cuda:N") from None


def _choose_dtype(device: str, requested: str, cuda_devices: list[CudaDevice]) -> str:
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1])
        dev = next(d for d in cuda_devices if d.index == index)
        return "bfloat16" if dev.bf16_supported else "float16"
    if device == "mps":
        return "float16"
    return "float32"


def probe(requested_device: str = "auto", requested_dtype: str = "auto") -> HardwareReport:
    """Inspect the machine. Imports torch only if it is installed."""
    vm = psutil.virtual_memory()
    torch_version, cuda, cuda_version, devices, mps = _torch_facts()
    return HardwareReport(
        cpu_model=_cpu_model(),
        cpu_cores_physical=psutil.cpu_count(logical=False),
        cpu_cores_logical=os.cpu_count() or 1,
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        platform=platform.platform(),
        python=platform.python_version(),
        torch_version=torch_version,
        cuda_available=cuda,
        cuda_version=cuda_version,
        cuda_devices=devices,
        mps_available=mps,
        choice=choose_device(
            requested_device,
            cuda_devices=devices,
            mps_available=mps,
            requested_dtype=requested_dtype,
        ),
    )


def usable_cpus(cgroup: Path = _CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a container's
    ``limits.cpu``, rounded up); at least 1.

    torch's own default counts the host's cores, which in a pod limited to 2 CPUs on a 64-core
    node means 64 threads contending for 2 CPUs' worth of time.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity call
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(root: Path = _CGROUP) -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 ``cpu.max``, else v1's CFS quota);
    None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def auto_torch_threads(cpus: int, workers: int = 1) -> int:
    """torch's CPU threads per worker process when not set: the usable CPUs shared out among
    the workers; at least 1."""
    return max(1, cpus // max(1, workers))
