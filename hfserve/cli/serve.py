"""``hfserve serve``: run the OpenAI-compatible server under uvicorn, with graceful drain."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hfserve.errors import ConfigError

if TYPE_CHECKING:
    from hfserve.server.state import ServerState
    from hfserve.settings import Settings

__all__ = ["build_settings", "serve_command"]

log = logging.getLogger("hfserve")


def serve_command(
    model: list[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="[ALIAS=]PATH_OR_ID to serve; repeat for several (requests name them by alias). "
        "None: the built-in offline demo models.",
        show_default=False,
    ),
    models_dir: Path = typer.Option(
        None,
        "--models-dir",
        help="Offer every model folder and .gguf file in DIR by name; each loads on its first "
        "request and is unloaded by LRU, --cache-memory and idle time.",
        show_default=False,
    ),
    task: str = typer.Option(
        None,
        help="Force the skill task (text-generation, embeddings, text-classification, "
        "rerank, speech-to-text).",
    ),
    chat_template: list[str] = typer.Option(
        None,
        "--chat-template",
        help="ALIAS=FILE: serve model ALIAS with the Jinja chat template in FILE instead of its "
        "own (e.g. one that renders tools); repeat per model.",
        show_default=False,
    ),
    host: str = typer.Option(
        None, help="Address to bind.  [default: 127.0.0.1]", show_default=False
    ),
    port: int = typer.Option(None, help="Port to bind.  [default: 8000]", show_default=False),
    workers: int = typer.Option(
        None, help="uvicorn worker processes.  [default: 1]", show_default=False
    ),
    keys_file: Path = typer.Option(
        None, help="API keys file.  [default: ~/.config/hfserve/keys.json]", show_default=False
    ),
    no_auth: bool = typer.Option(
        False,
        "--no-auth",
        help="Serve without API keys, even once keys exist. Without keys a non-loopback "
        "--host refuses to start unless this is given.",
    ),
    device: str = typer.Option(
        None, help="auto, cpu, cuda, cuda:N or mps.  [default: auto]", show_default=False
    ),
    dtype: str = typer.Option(
        None, help="auto, float32, float16 or bfloat16.  [default: auto]", show_default=False
    ),
    max_batch_size: int = typer.Option(
        None,
        help="Most items per embeddings/classification batch.  [default: 32]",
        show_default=False,
    ),
    max_wait_ms: float = typer.Option(
        None, help="How long a forming batch may linger (ms).  [default: 5]", show_default=False
    ),
    max_queue: int = typer.Option(
        None, help="Queued requests per model before 503.  [default: 256]", show_default=False
    ),
    max_loaded_models: int = typer.Option(
        None, help="Most models in memory at once.  [default: 4]", show_default=False
    ),
    cache_memory: str = typer.Option(
        None, help="Byte budget for loaded models, e.g. 8GiB (0 = none).", show_default=False
    ),
    torch_threads: int = typer.Option(
        None,
        help="Threads torch uses per worker for CPU inference (0: OMP_NUM_THREADS if set, else "
        "the usable CPUs, container limit included, shared by the workers).  [default: 0]",
        show_default=False,
    ),
    response_cache: bool = typer.Option(
        None,
        "--response-cache/--no-response-cache",
        help="Cache deterministic responses.  [default: on]",
        show_default=False,
    ),
    redis_url: str = typer.Option(
        None, help="Redis URL for state shared across replicas.", show_default=False
    ),
    allow_remote_media: bool = typer.Option(
        None,
        "--allow-remote-media/--no-allow-remote-media",
        help="Fetch http(s) image URLs in chat (public addresses only).  [default: off]",
        show_default=False,
    ),
    max_images_per_request: int = typer.Option(
        None, help="Most images in one chat request.  [default: 8]", show_default=False
    ),
    grace_period: float = typer.Option(
        None, help="Seconds in-flight requests get on SIGTERM.  [default: 30]", show_default=False
    ),
    log_level: str = typer.Option(
        None, help="critical, error, warning, info or debug.  [default: info]", show_default=False
    ),
    log_format: str = typer.Option(
        None,
        help="text, or json (one object per line, for log pipelines).  [default: text]",
        show_default=False,
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="hfserve.toml config file.", show_default=False
    ),
) -> None:
    """Serve models over an OpenAI-compatible HTTP API (flags > HFSERVE_* env > config file)."""
    settings = build_settings(
        config,
        models=model or None,
        models_dir=models_dir,
        task=task,
        chat_templates=chat_template or None,
        host=host,
        port=port,
        workers=workers,
        keys_file=keys_file,
        auth=False if no_auth else None,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_loaded_models=max_loaded_models,
        cache_memory=cache_memory,
        response_cache=response_cache,
        torch_threads=torch_threads,
        redis_url=redis_url,
        allow_remote_media=allow_remote_media,
        max_images_per_request=max_images_per_request,
        grace_period=grace_period,
        log_level=log_level,
        log_format=log_format,
    )
    run_server(settings)


def build_settings(config: Path | None, **flags: Any) -> Settings:
    """Settings for ``serve``: flags over env over the config file, checked for what we support."""
    from hfserve.settings import Settings

    settings = Settings.load(config, **flags)
    if settings.workers > 1 and not settings.redis_url:
        raise ConfigError(
            "--workers > 1 needs --redis-url: rate limits, revocations and the response cache "
            "must be shared by the worker processes (each worker also loads its own copy of "
            "every model; one worker per container with more replicas is often the better fit)"
        )
    return settings


# Spins of a waiting OpenMP thread before it sleeps (see apply_torch_threads).
OMP_SPIN_COUNT = 10_000


def apply_torch_threads(settings: Settings) -> int | None:
    """Fix torch's CPU threads for the whole process (workers inherit them); the count set, or
    None when the environment already names one.

    OpenMP reads its settings per thread, when torch first loads: so this sets the environment
    before anything imports torch rather than calling ``torch.set_num_threads``, which would
    only affect the calling thread and not the batcher or engine threads.

    * ``--torch-threads 0`` (the default): ``OMP_NUM_THREADS`` when set, else the usable CPUs
      (affinity, capped by a cgroup quota) shared out among the workers. torch's own count is
      the host's cores, whatever a container's CPU limit.
    * ``OMP_WAIT_POLICY=PASSIVE`` unless set: a thread that finishes its share of a product
      sleeps instead of spinning. Spinning threads take the CPU from the event loop, and when
      the event loop preempts one of them the rest spin at the barrier waiting for it:
      embeddings at c=32 ran 2-5x slower under load, and even on an idle 2-vCPU machine the
      passive policy served 18% more (docs/benchmarks.md, "CPU threads").
    * With it, ``GOMP_SPINCOUNT=10000`` unless set: a waiting thread spins that long (tens of
      microseconds) before it sleeps, while an idle server still burns no CPU. GNU OpenMP
      (torch's Linux wheels) throttles that spin to zero under ``PASSIVE`` once its pools
      hold more threads than CPUs, so the generation engine keeps its torch work on one
      thread (a generation-only server keeps the spin). A server that also runs other models
      has their threads' pools too; on CPUs it has to itself,
      ``OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=1000`` keeps a short spin in every case, which
      helped embeddings under load but is now slower for generation (docs/operations.md,
      "CPU threads"). An operator's own ``OMP_WAIT_POLICY`` is left alone, and so is their
      spin count.
    """
    from hfserve.hardware import auto_torch_threads, usable_cpus

    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ.setdefault("GOMP_SPINCOUNT", str(OMP_SPIN_COUNT))
    threads = settings.torch_threads
    if not threads:
        if "OMP_NUM_THREADS" in os.environ:
            return None  # the operator's own choice
        threads = auto_torch_threads(usable_cpus(), settings.workers)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return threads


def run_server(settings: Settings) -> None:
    """Build the app and run it until SIGTERM/SIGINT, draining gracefully."""
    import uvicorn

    from hfserve.cli.banner import print_banner
    from hfserve.hardware import probe
    from hfserve.logs import configure_logging
    from hfserve.server.app import create_app
    from hfserve.server.lifecycle import DrainingServer
    from hfserve.settings import is_loopback

    apply_torch_threads(settings)  # before anything imports torch
    configure_logging(settings.log_level, settings.log_format)
    from hfserve.runtime.sources import check_startup

    check_startup(settings)  # a missing folder, Hub id or device: one line, before anything
    app = create_app(settings)
    state: ServerState = app.state.hfserve
    settings.check_exposure(len(state.keystore.list_keys()))
    if not state.auth_enabled() and not is_loopback(settings.host):
        log.warning(
            "serving on %s without API keys (--no-auth): anyone who can reach this port can "
            "use it.",
            settings.host,
        )
    print_banner(settings, state, probe(settings.device, settings.dtype).choice)
    # Our own drain (DrainingServer) has already waited up to the grace period when uvicorn
    # starts its shutdown, so uvicorn's own wait is short.
    options: dict[str, Any] = {
        "log_level": settings.log_level,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 1,
        "log_config": None,
    }
    if settings.workers > 1:
        from hfserve.server.workers import run_workers

        raise typer.Exit(run_workers(settings, options))
    config = uvicorn.Config(app, host=settings.host, port=settings.port, **options)
    server = DrainingServer(config, state=state, grace_period=settings.grace_period)
    server.run()
    if state.preload_error is not None:
        from hfserve.errors import ModelLoadError

        raise ModelLoadError(state.preload_error)
