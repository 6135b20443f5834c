#!/usr/bin/env bash
# Rewrite .ci/test-constraints.txt from the active virtual environment, after the README test
# command passed in it. CI and the README install the test toolchain with `-c` that file, so a
# new release of pytest, schemathesis or transformers cannot break the suite unannounced.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.ci/test-constraints.txt
{
  echo "# Versions the test toolchain is known to pass with (frozen on $(date +%F) by"
  echo "# scripts/freeze-test-constraints.sh; pytest held below 9.2: schemathesis 4.32's pytest"
  echo "# plugin reads Function._nodeid, gone in 9.2). .ci/run and README \"Development\" install"
  echo "# with -c this file; regenerate it after a green run on newer versions."
  # pip list, not pip freeze: a package installed from a local wheel is still name==version.
  # torch: the version only, without the +cpu/+cuXXX build tag, so the pin fits every build.
  python -m pip list --format=freeze --exclude-editable | grep -viE '^(hfserve|torch|pip|setuptools)[=@ ]'
  python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])'
} > "$out"
echo "wrote $out"
