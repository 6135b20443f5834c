"""hfserve: serve HuggingFace transformers models in production.

The curated public API. Every name is imported on first use (names that pull in the web
stack or the model runtime included), so ``import hfserve`` stays fast
and never imports torch, transformers or starlette.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hfserve._version import __version__

if TYPE_CHECKING:
    from hfserve.bench import BenchConfig, run_benchmark
    from hfserve.core import (
        ApiKey,
        CircuitBreaker,
        Clock,
        FakeClock,
        KeyStore,
        MicroBatcher,
        ModelCache,
        RateLimiter,
        RateLimits,
        ResponseCache,
    )
    from hfserve.deploy import render as render_manifests
    from hfserve.errors import (
        AuthError,
        CircuitOpenError,
        ConfigError,
        HfServeError,
        InvalidRequestError,
        ModelLoadError,
        ModelNotFoundError,
        OverloadedError,
        RateLimitedError,
        SkillNotFoundError,
    )
    from hfserve.hardware import probe
    from hfserve.runtime.loader import ModelLoader
    from hfserve.server.app import create_app
    from hfserve.settings import Settings
    from hfserve.skills.base import LoadedModel, RuntimeOptions, Skill, SkillInfo
    from hfserve.skills.registry import SkillRegistry

__all__ = [
    "ApiKey",
    "AuthError",
    "BenchConfig",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConfigError",
    "FakeClock",
    "HfServeError",
    "InvalidRequestError",
    "KeyStore",
    "LoadedModel",
    "MicroBatcher",
    "ModelCache",
    "ModelLoadError",
    "ModelLoader",
    "ModelNotFoundError",
    "OverloadedError",
    "RateLimitedError",
    "RateLimiter",
    "RateLimits",
    "ResponseCache",
    "RuntimeOptions",
    "Settings",
    "Skill",
    "SkillInfo",
    "SkillNotFoundError",
    "SkillRegistry",
    "__version__",
    "create_app",
    "probe",
    "render_manifests",
    "run_benchmark",
]

_CORE = ("ApiKey", "CircuitBreaker", "Clock", "FakeClock", "KeyStore", "MicroBatcher", "ModelCache")
_ERRORS = (
    "AuthError",
    "CircuitOpenError",
    "ConfigError",
    "HfServeError",
    "InvalidRequestError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OverloadedError",
    "RateLimitedError",
    "SkillNotFoundError",
)
# Every public name is imported on first use: `hfserve --help` imports this package and
# must not pay for pydantic, asyncio or the web stack.
_LAZY = {
    **{
        name: ("hfserve.core", name)
        for name in (*_CORE, "RateLimiter", "RateLimits", "ResponseCache")
    },
    **{name: ("hfserve.errors", name) for name in _ERRORS},
    **{
        name: ("hfserve.skills.base", name)
        for name in ("LoadedModel", "RuntimeOptions", "Skill", "SkillInfo")
    },
    "Settings": ("hfserve.settings", "Settings"),
    "BenchConfig": ("hfserve.bench", "BenchConfig"),
    "ModelLoader": ("hfserve.runtime.loader", "ModelLoader"),
    "SkillRegistry": ("hfserve.skills.registry", "SkillRegistry"),
    "create_app": ("hfserve.server.app", "create_app"),
    "probe": ("hfserve.hardware", "probe"),
    "render_manifests": ("hfserve.deploy", "render"),
    "run_benchmark": ("hfserve.bench", "run_benchmark"),
}


def __getattr__(name: str) -> Any:
    """Import public names on first use."""
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'hfserve' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
