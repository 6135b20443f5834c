"""The README's tour and every docs/quickstart.md block, run as a user would type them.

The commands run verbatim through ``bash`` in order, with these substitutions only, each for
something a test machine cannot do:

- the served port ``8000`` becomes a free port (other tests share the machine);
- in ``hfserve serve`` lines, the example models (``Qwen/Qwen2.5-0.5B-Instruct``, ``./my-embedder``)
  become the offline demo models' folders (no Hub access in CI);
- ``$KEY`` is the key ``hfserve keys create`` printed, as the user would copy it;
- ``hfserve serve`` runs in the background until the next one (a ``--model`` serve in the
  quickstart is an aside: it must come up ready and is then stopped);
- ``kubectl`` is a stand-in on ``PATH`` that parses the manifests it is given (no cluster);
- the install block runs in a throwaway virtual environment that sees this one's packages.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)
_KUBECTL = """\
#!{python}
import pathlib, sys, yaml
folder = pathlib.Path(sys.argv[sys.argv.index("-f") + 1])
docs = [d for p in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
assert sys.argv[1] == "apply" and docs, sys.argv
for doc in docs:
    assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    print(f"{{doc['kind'].lower()}}/{{doc['metadata']['name']}} created (stand-in)")
"""


def blocks(markdown: str) -> list[tuple[str, str]]:
    """The fenced bash and python blocks of a page, in order."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(markdown)]


def commands(block: str) -> list[str]:
    """A bash block's commands: continuation lines joined, and a quote left open at the end of
    a line (a JSON body spread over lines) carried on to the next, as bash reads them."""
    found: list[str] = []
    pending = ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        if pending.strip():
            found.append(pending.strip())
        pending = ""
    assert not pending, f"unterminated quote in: {pending}"
    return found


class Session:
    """One user's shell: a home of their own, the servers they started, the key they copied."""

    def __init__(self, home: Path, demo_chat: Path, minilm: Path) -> None:
        self.home = home
        self.demo = {
            "Qwen/Qwen2.5-0.5B-Instruct": str(demo_chat),
            "./models/my-embedder": str(minilm),
            "./my-embedder": str(minilm),
        }
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"
        bin_dir = home / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        kubectl = bin_dir / "kubectl"
        kubectl.write_text(_KUBECTL.format(python=sys.executable))
        kubectl.chmod(0o755)
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("HFSERVE_", "OPENAI_"))
        } | {
            "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent)])
            + os.pathsep
            + os.environ["PATH"],
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200",
            "PYTHONPATH": str(ROOT),
        }

    def run(self, command: str, timeout: float = 600) -> str:
        """Run one command line; a ``hfserve serve`` starts a server in the background."""
        command = command.replace(":8000", f":{self.port}")
        if command.startswith("hfserve serve"):
            self.serve(command)
            return ""
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        if command.startswith("hfserve keys create"):
            self.env["KEY"] = next(w for w in done.stdout.split() if w.startswith("hf-"))
        return done.stdout + done.stderr

    def python(self, code: str) -> str:
        """Run a python block with the user's ``KEY`` defined."""
        code = code.replace(":8000", f":{self.port}")
        preamble = "import os\nKEY = os.environ['KEY']\n"
        done = subprocess.run(
            [sys.executable, "-c", preamble + code],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{code}\n{done.stderr}"
        return done.stdout

    def serve(self, command: str) -> None:
        """Start ``command`` as the session's server (an aside ``--model`` one is checked, then stopped)."""
        aside = "--model" in command and self.server is not None
        for example, folder in self.demo.items():
            command = re.sub(rf"=({re.escape(example)})(?=\s|$)", "=" + folder, command)
        port = free_port() if aside else self.port
        argv = [*shlex.split(command, comments=True), "--port", str(port), "--device", "cpu"]
        if not aside:
            self.stop()
        log = self.home / f"server-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=self.home, env=self.env, stdout=out, stderr=out)
        self._wait_ready(proc, port, log)
        if aside:
            proc.terminate()
            assert proc.wait(120) == 0, log.read_text()
        else:
            self.server, self.log = proc, log

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server never became ready:\n" + log.read_text())

    def stop(self) -> None:
        """Stop the running server (SIGTERM, as Ctrl-C would) and check it exits cleanly."""
        if self.server is not None:
            self.server.terminate()
            assert self.server.wait(120) == 0, self.log.read_text()
            self.server = None


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The offline demo models' folders: the random-weights chat model and MiniLM."""
    from hfserve.runtime.demo import build_demo_chat, minilm_path

    return build_demo_chat(tmp_path_factory.mktemp("demo") / "demo-chat"), minilm_path()


@pytest.fixture
def session(tmp_path: Path, demo_models: tuple[Path, Path]) -> Iterator[Session]:
    """A fresh user session; its server is stopped at the end."""
    user = Session(tmp_path / "home", *demo_models)
    yield user
    user.stop()


# The tour's benchmark sends 200 and the quickstart's 100 requests of up to 128 tokens each to
# the random-weights chat model: a minute or so on an idle CI runner, far more on a busy one.
@pytest.mark.timeout(1800)
def test_readme_tour_runs_in_order(session: Session) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = readme.split("## A 30-second tour", 1)[1].split("\n## ", 1)[0]
    outputs: list[str] = []
    for kind, body in blocks(tour):
        if kind == "python":
            outputs.append(session.python(body))
            continue
        outputs += [session.run(command) for command in commands(body)]
    text = "\n".join(outputs)
    assert "Auth     on: 1 key in" in session.log.read_text()
    assert '"object":"chat.completion"' in text  # curl, with the key
    assert re.search(r"Requests ok\s+\S*\s*200\b", text), text  # bench: all 200 succeeded
    assert re.search(r"Requests failed\s+\S*\s*0\b", text), text
    assert (session.home / "k8s" / "deployment.yaml").is_file()
    assert "auth on: 1 key in" in text  # k8s render put alice's key in the Secret


@pytest.mark.timeout(1800)
def test_quickstart_blocks_run_in_order(session: Session) -> None:
    page = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    found = blocks(page)
    install, rest = found[0][1], found[1:]
    assert install.lstrip().startswith("pip install")
    venv = session.home / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # This environment's packages (torch and friends) are visible to the new venv, so pip finds
    # them installed and downloads nothing heavy. A .pth line rather than
    # --system-site-packages, which in a venv (CI) exposes the base interpreter instead.
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_dir / "_test_env.pth").write_text("".join(f"{path}\n" for path in sorted(outer)))
    session.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{session.env['PATH']}"
    for command in commands(install):
        # From a clone: the install runs in the repository, as the page says.
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=ROOT,
            env=session.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    outputs = []
    for kind, body in rest:
        assert kind == "bash", textwrap.shorten(body, 80)
        outputs += [session.run(command) for command in commands(body)]
    text = "\n".join(outputs)
    assert '"object":"chat.completion"' in text
    assert re.search(r"Requests ok\s+\S*\s*100\b", text), text
    assert "created (stand-in)" in text
    assert "Auth     on: 1 key in" in session.log.read_text()
