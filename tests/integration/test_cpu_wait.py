"""The dedicated-CPU tuning of docs/operations.md ("CPU threads") on a real server.

``OMP_WAIT_POLICY=ACTIVE GOMP_SPINCOUNT=1000``: torch's OpenMP threads spin briefly between
operators, then sleep, so an idle server burns no CPU. The control is the same server with
GNU OpenMP's own spin count under ``ACTIVE`` (minutes), whose threads keep spinning long after
the last request: it shows the test can see a spinning thread.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from hfserve.hardware import usable_cpus
from hfserve.runtime.demo import minilm_path
from tests.integration.conftest import ServerProcess, StartServer

pytestmark = pytest.mark.integration

# GNU OpenMP's own spin count under ACTIVE: minutes of spinning.
ACTIVE_DEFAULT = "30000000000"
# Large enough for a forward on both threads (small ones run on one; see skills/_threads.py).
BATCH = {"model": "minilm", "input": [f"sentence {i} about the weather" for i in range(64)]}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu(server: ServerProcess, seconds: float = 2.0) -> float:
    """CPU seconds the server burns over ``seconds`` with no request in flight."""
    before = _cpu_seconds(server.proc.pid)
    time.sleep(seconds)
    return _cpu_seconds(server.proc.pid) - before


@pytest.mark.skipif(
    usable_cpus() < 2,
    reason="on one CPU GNU OpenMP throttles every spin, so the spinning control cannot spin",
)
def test_a_short_spin_leaves_an_idle_server_asleep(start_server: StartServer) -> None:
    models = [f"minilm={minilm_path()}"]
    options = ("--no-auth", "--no-response-cache", "--torch-threads", "2")
    tuned = start_server(
        *options, models=models, env={"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1000"}
    )
    spinning = start_server(
        *options, models=models, env={"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": ACTIVE_DEFAULT}
    )
    for server in (tuned, spinning):
        response = httpx.post(server.url + "/v1/embeddings", json=BATCH, timeout=60)
        assert response.status_code == 200
        assert len(response.json()["data"]) == 64
    assert _idle_cpu(spinning) > 0.5  # a thread still spinning at the barrier
    # Measured after the control's two seconds, so its own request is long over.
    assert _idle_cpu(tuned) < 0.2  # 1000 spins, then asleep
    # The banner says how torch's threads wait.
    assert "Threads  2 torch, active wait after 1000 spins" in tuned.log()
