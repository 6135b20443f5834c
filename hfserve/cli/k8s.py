"""``hfserve k8s render``: Kubernetes manifests from the same settings ``hfserve serve`` reads.

Imports stay light (no torch, transformers or starlette): rendering is plain data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hfserve.deploy.options import RenderOptions

__all__ = ["k8s_app", "render_command"]

k8s_app = typer.Typer(
    help="Kubernetes deployment: render manifests from your hfserve settings.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_DEFAULTS = RenderOptions()


@k8s_app.command("render")
def render_command(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="hfserve.toml whose settings the pods run with."),
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the Deployment and its resources.")] = (
        _DEFAULTS.name
    ),
    namespace: Annotated[str, typer.Option(help="Namespace of every resource.")] = (
        _DEFAULTS.namespace
    ),
    image: Annotated[str, typer.Option(help="Container image to run.")] = _DEFAULTS.image,
    replicas: Annotated[
        int, typer.Option(min=1, help="Replicas (and the autoscaler's minimum).")
    ] = _DEFAULTS.replicas,
    max_replicas: Annotated[
        int | None, typer.Option(min=1, help="Autoscaler maximum. Default: 3 x replicas.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="Model to serve as [ALIAS=]PATH_OR_ID (repeatable); overrides config."),
    ] = None,
    redis: Annotated[
        bool, typer.Option(help="Also deploy Redis and point the replicas' shared state at it.")
    ] = _DEFAULTS.redis,
    ingress: Annotated[bool, typer.Option(help="Render an Ingress with TLS.")] = (
        _DEFAULTS.ingress
    ),
    ingress_host: Annotated[str, typer.Option(help="Host name the Ingress serves.")] = (
        _DEFAULTS.ingress_host
    ),
    keys_file: Annotated[
        Path | None,
        typer.Option(
            help="API keys file (from `hfserve keys create`) to put in the Secret, hashed. "
            "Default: the keys file `hfserve serve` reads, when it exists. Without any key "
            "render refuses unless --no-auth is given.",
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth", help="Deploy without API keys: the pods serve anyone who reaches them."
        ),
    ] = False,
    queue_metric: Annotated[
        bool,
        typer.Option(
            help="Also autoscale on the per-pod queue depth (needs a Prometheus metrics adapter)."
        ),
    ] = _DEFAULTS.queue_metric,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write one <kind>.yaml per kind here instead of to stdout."
        ),
    ] = None,
) -> None:
    """Render the Deployment, Service, Ingress, ConfigMap, Secret, HPA, PVC and PDB."""
    from hfserve.deploy.exposure import resolve_keys
    from hfserve.deploy.manifests import render
    from hfserve.deploy.output import dump_documents, write_manifests
    from hfserve.settings import Settings

    settings = Settings.load(config, models=model or None, auth=False if no_auth else None)
    options = RenderOptions(
        name=name,
        namespace=namespace,
        image=image,
        replicas=replicas,
        max_replicas=max_replicas,
        redis=redis,
        ingress=ingress,
        ingress_host=ingress_host,
        keys_file=keys_file.expanduser() if keys_file is not None else None,
        queue_metric=queue_metric,
    )
    options, auth_status = resolve_keys(settings, options)
    typer.echo(auth_status, err=True)
    manifests = render(settings, options)
    if out is None:
        typer.echo(dump_documents([doc for docs in manifests.values() for doc in docs]), nl=False)
        return
    for path in write_manifests(manifests, out):
        typer.echo(f"wrote {path}", err=True)
