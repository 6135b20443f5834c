"""Several uvicorn worker processes on one socket, each draining on SIGTERM.

uvicorn's own supervisor builds a plain ``uvicorn.Server`` in each worker; hfserve needs its
``DrainingServer`` there (readiness off, in-flight requests finish, exit 0), so this small
supervisor binds the socket once, starts ``workers`` spawned processes that each build the app
from the same ``Settings``, forwards SIGTERM/SIGINT to them, restarts a worker that dies, and
points prometheus_client at a shared directory so ``/metrics`` aggregates every worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

from hfserve.settings import Settings

__all__ = ["run_workers"]

log = logging.getLogger("hfserve.server")
_STARTUP_FAILURE = 3  # uvicorn's exit code when the app fails before serving
multiprocessing.allow_connection_pickling()


def _worker_main(settings: Settings, sock: socket.socket, uvicorn_options: dict[str, Any]) -> None:
    """Entry point of one worker process: build the app and serve the inherited socket."""
    import uvicorn

    from hfserve.logs import configure_logging
    from hfserve.server.app import create_app
    from hfserve.server.lifecycle import DrainingServer

    configure_logging(settings.log_level, settings.log_format, worker=True)
    app = create_app(settings)
    config = uvicorn.Config(app, **uvicorn_options)
    server = DrainingServer(config, state=app.state.hfserve, grace_period=settings.grace_period)
    server.run(sockets=[sock])


def run_workers(settings: Settings, uvicorn_options: dict[str, Any]) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; return the exit status."""
    from prometheus_client import multiprocess

    ctx = multiprocessing.get_context("spawn")
    metrics_dir = tempfile.mkdtemp(prefix="hfserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, on_signal)

    def spawn() -> SpawnProcess:
        proc = ctx.Process(target=_worker_main, args=(settings, sock, uvicorn_options))
        proc.start()
        log.info("started worker %s", proc.pid)
        return proc

    procs = [spawn() for _ in range(settings.workers)]
    failed = False
    try:
        while not stop.wait(0.5):
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                if proc.exitcode == _STARTUP_FAILURE:
                    log.error("worker %s failed to start; stopping", proc.pid)
                    failed = True
                    stop.set()
                    break
                log.warning("worker %s died with %s; starting another", proc.pid, proc.exitcode)
                procs[i] = spawn()
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(settings.grace_period + 15)
            if proc.is_alive():
                log.error("worker %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(metrics_dir)
    if failed:
        return 1
    return 0 if all(proc.exitcode == 0 for proc in procs) else 1
