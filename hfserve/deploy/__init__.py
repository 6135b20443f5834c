"""Kubernetes rendering from Settings, and the metric names the deployment relies on."""

from __future__ import annotations

from hfserve.deploy.metric_names import HISTOGRAM_METRICS, METRIC_NAMES
from hfserve.deploy.output import dump_documents, write_manifests
from hfserve.deploy.render import KINDS, RenderOptions, render

__all__ = [
    "HISTOGRAM_METRICS",
    "KINDS",
    "METRIC_NAMES",
    "RenderOptions",
    "dump_documents",
    "render",
    "write_manifests",
]
