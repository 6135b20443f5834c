"""CLI start-up time: ``hfserve --help`` and ``hfserve keys list`` vs ``import typer``.

Each command runs as a fresh subprocess many times (interleaved, so machine noise hits all
of them alike) and the median wall time is reported; ``python -c "import typer"`` is the
floor any Typer CLI pays. A separate ``python -X importtime`` run of each hfserve command
checks which heavy modules it imports: ``--help`` must never import torch.

Target: ``hfserve --help`` <= 150 ms (median) and no torch import.

    python benchmarks/cli_startup.py [--smoke]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import Report, Target, parse_args, temp_dir

BASELINE = "python -c 'import typer'"
HEAVY = ("torch", "transformers", "starlette", "uvicorn", "numpy")


def _hfserve() -> list[str]:
    """The installed console script, as a user runs it (else ``python -m hfserve``)."""
    # The script next to this interpreter first: under pyenv, PATH's ``hfserve`` is a bash shim
    # that adds ~100 ms of its own before Python starts, which is pyenv's cost, not hfserve's.
    # In a virtual environment (what benchmarks/README.md asks for) both are the same file.
    beside = Path(sys.executable).parent / "hfserve"
    if beside.is_file():
        return [str(beside)]
    script = shutil.which("hfserve")
    return [script] if script else [sys.executable, "-m", "hfserve"]


def _time(argv: Sequence[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def imported_modules(argv: Sequence[str], env: dict[str, str]) -> set[str]:
    """Top-level packages a command imports, from ``python -X importtime``."""
    result = subprocess.run(
        argv, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True, text=True
    )
    modules: set[str] = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            modules.add(name.split(".")[0])
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    """Time the commands and write ``cli_startup.json`` / ``cli_startup.png``."""
    args = parse_args(__doc__ or "", argv)
    runs = 3 if args.smoke else 30
    report = Report("cli_startup", "CLI start-up (median wall time)", "ms", args.smoke)
    with temp_dir("hfserve-cli-") as tmp:
        env = {**os.environ, "HFSERVE_KEYS_FILE": str(tmp / "keys.json")}
        commands = {
            BASELINE: [sys.executable, "-c", "import typer"],
            "hfserve --help": [*_hfserve(), "--help"],
            "hfserve keys list": [*_hfserve(), "keys", "list"],
        }
        for command in commands.values():
            _time(command, env)  # warm the page cache and .pyc files
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                samples[name].append(_time(command, env))
        for name, values in samples.items():
            heavy = "" if name == BASELINE else None
            if heavy is None:
                found = imported_modules(commands[name], env) & set(HEAVY)
                heavy = ", ".join(sorted(found)) or "none"
            report.add(
                name,
                statistics.median(values) * 1000,
                runs=len(values),
                min_ms=min(values) * 1000,
                heavy_imports=heavy,
            )
    report.add_ratios(BASELINE)
    help_ms = report.measured("hfserve --help")
    report.targets.append(Target("hfserve --help median", help_ms, 150.0, " ms", False))
    help_row = next(r for r in report.rows if r["system"] == "hfserve --help")
    torch_free = "torch" not in help_row["heavy_imports"]
    report.targets.append(
        Target("hfserve --help imports torch (0 = no)", float(not torch_free), 0.0, "", False)
    )
    report.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
