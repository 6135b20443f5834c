"""Real ``hfserve serve`` processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fixtures.tiny_models import TinyModels
from tests.server.conftest import model_args


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``hfserve serve`` and how to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not exit after SIGTERM:\n" + self.log()) from None


def wait_ready(server: ServerProcess, timeout: float = 180.0) -> None:
    """Poll /ready until 200, failing early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server never became ready:\n" + server.log())


StartServer = Callable[..., ServerProcess]


def spawn_server(
    workdir: Path,
    models: list[str],
    keys_file: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start ``python -m hfserve serve`` on a free loopback port, logging to ``workdir``."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "hfserve", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--keys-file", str(keys_file), "--device", "cpu"]
    for model in models:
        cmd += ["--model", model]
    cmd += list(extra)
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"} | (env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return ServerProcess(proc, port, log_path)


@pytest.fixture
def start_server(tmp_path: Path, tiny_models: TinyModels) -> Iterator[StartServer]:
    """Start ``python -m hfserve serve`` with the tiny models; every server is stopped at the end."""
    started: list[ServerProcess] = []

    def start(
        *extra: str,
        models: list[str] | None = None,
        env: dict[str, str] | None = None,
        keys_file: Path | None = None,
        ready_timeout: float = 180.0,
    ) -> ServerProcess:
        models = models if models is not None else model_args(tiny_models)
        server = spawn_server(
            tmp_path, models, keys_file or tmp_path / "keys.json", *extra, env=env
        )
        started.append(server)
        wait_ready(server, ready_timeout)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()
