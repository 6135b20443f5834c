"""The curated public API: a guard against accidental additions or removals."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hfserve

EXPECTED = {
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
}


def test_all_is_exactly_the_curated_api() -> None:
    assert set(hfserve.__all__) == EXPECTED
    assert len(hfserve.__all__) == len(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(hfserve, name) is not None
    assert name in dir(hfserve)


def test_unknown_attribute_raises() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = hfserve.nope  # type: ignore[attr-defined]


def test_import_hfserve_stays_light() -> None:
    code = (
        "import sys, hfserve; "
        "print(','.join(m for m in ('torch', 'transformers', 'starlette', 'uvicorn', 'typer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
