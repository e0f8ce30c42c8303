#!/usr/bin/env bash
# `pip install` of the repository, as docs/hf.md tells a user: builds the
# wheel with scikit-build-core and nanobind (from the project's cached
# environment, no network), installs it into a scratch folder and imports
# the extension from there, away from the build tree.
set -euo pipefail
python=$1
root=$(cd "$(dirname "$0")/../.." && pwd)
scratch=$(mktemp -d /tmp/tidepool-pip-XXXXXX)
trap 'rm -rf "$scratch"' EXIT
"$python" -m pip wheel --no-deps --no-build-isolation -q -w "$scratch/wheel" \
  -C build-dir="$scratch/build" -C cmake.define.TIDEPOOL_WITH_CUDA=OFF "$root"
"$python" -m pip install --no-deps -q --target "$scratch/site" "$scratch"/wheel/tidepool-*.whl
cd "$scratch"
PYTHONPATH="$scratch/site" "$python" - <<'PY'
import tidepool, tidepool._core, tidepool.torch
assert tidepool.__file__.startswith(__import__("os").getcwd()), tidepool.__file__
try:
    tidepool.Session("/nonexistent/tidepoold.sock")
except tidepool.UnavailableError as e:
    assert "/nonexistent/tidepoold.sock" in str(e)
print("installed and imported from", tidepool.__file__)
PY
