"""Kubernetes rendering from Settings, and the metric names the deployment relies on.

Names are imported on first use so the CLI can use the light ones without loading Settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hfserve.deploy.manifests import KINDS, render
    from hfserve.deploy.metric_names import HISTOGRAM_METRICS, METRIC_NAMES
    from hfserve.deploy.options import RenderOptions
    from hfserve.deploy.output import dump_documents, write_manifests

__all__ = [
    "HISTOGRAM_METRICS",
    "KINDS",
    "METRIC_NAMES",
    "RenderOptions",
    "dump_documents",
    "render",
    "write_manifests",
]

_LAZY = {
    "HISTOGRAM_METRICS": "hfserve.deploy.metric_names",
    "METRIC_NAMES": "hfserve.deploy.metric_names",
    "RenderOptions": "hfserve.deploy.options",
    "dump_documents": "hfserve.deploy.output",
    "write_manifests": "hfserve.deploy.output",
    "KINDS": "hfserve.deploy.manifests",
    "render": "hfserve.deploy.manifests",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'hfserve.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
