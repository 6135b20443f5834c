#!/usr/bin/env python3
"""Smoke-test a running hfserve: liveness, readiness, the model list and Prometheus metrics.

Used by the deploy workflows after a rollout. Standard library only, so it runs on a bare CI
runner without hfserve installed. Exit 0 when every check passes, 1 otherwise.

    python deployments/scripts/smoke_test.py http://127.0.0.1:8000 [--api-key KEY]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request


def fetch(url: str, api_key: str | None, timeout: float) -> tuple[int, bytes]:
    """GET ``url``; return the status and body (HTTP errors are answers, not exceptions)."""
    request = urllib.request.Request(url)  # noqa: S310 - the URL is the operator's own server
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(base: str, api_key: str | None, deadline_s: float, timeout: float) -> bool:
    """Poll /ready until it answers 200 or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if fetch(f"{base}/ready", api_key, timeout)[0] == 200:
                return True
        except OSError:
            pass  # not listening yet
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def run_checks(base: str, api_key: str | None, timeout: float) -> list[str]:
    """Run the checks once; return the failures (empty when all pass)."""
    failures: list[str] = []
    status, _ = fetch(f"{base}/health", None, timeout)
    if status != 200:
        failures.append(f"/health answered {status}")
    status, body = fetch(f"{base}/v1/models", api_key, timeout)
    if status != 200:
        failures.append(f"/v1/models answered {status}")
    else:
        models = json.loads(body).get("data", [])
        if not models:
            failures.append("/v1/models lists no model")
    status, body = fetch(f"{base}/metrics", api_key, timeout)
    if status != 200 or b"hfserve_" not in body:
        failures.append(f"/metrics answered {status} without hfserve_ metrics")
    return failures


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, wait for readiness, run the checks and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url", help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("HFSERVE_API_KEY"))
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for /ready")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    args = parser.parse_args(argv)
    base = args.base_url.rstrip("/")
    if not wait_ready(base, args.api_key, args.wait, args.timeout):
        print(f"FAIL {base}/ready did not answer 200 within {args.wait:g}s", file=sys.stderr)
        return 1
    failures = run_checks(base, args.api_key, args.timeout)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if not failures:
        print(f"OK {base}: health, ready, models and metrics")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
