#!/usr/bin/env bash
# Creates (once) the cached Python environment that the PyTorch package, its
# tests and the demo use, and prints its path. Torch is about 3 GB: the
# environment lives outside the work tree so that fresh clones on the same
# machine (CI) reuse it. TIDEPOOL_VENV overrides where; TIDEPOOL_PYTHON names
# an interpreter that already has everything (e.g. the GPU machine's).
set -euo pipefail

requirements=(
  "torch>=2.4" "transformers>=4.45" "peft" "accelerate"
  "nanobind>=2.0" "scikit-build-core>=0.10" "cmake>=3.26" "ninja"
  "numpy" "matplotlib" "tqdm" "pytest" "pytest-timeout"
)

if [ -n "${TIDEPOOL_PYTHON:-}" ]; then
  echo "$TIDEPOOL_PYTHON"
  exit 0
fi

venv="${TIDEPOOL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tidepool/venv-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
stamp="$venv/.tidepool-requirements"
wanted="$(printf '%s\n' "${requirements[@]}")"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "$venv/bin/python"
  exit 0
fi

echo "tidepool: preparing the Python environment in $venv (torch is ~3 GB on first install)" >&2
if ! python3 -m venv --help >/dev/null 2>&1; then
  echo "tidepool: python3 has no venv module; install python3-venv" >&2
  exit 1
fi
python3 -m venv "$venv" >&2
"$venv/bin/python" -m pip install -q --upgrade pip >&2
"$venv/bin/python" -m pip install -q "${requirements[@]}" >&2
printf '%s' "$wanted" > "$stamp"
echo "$venv/bin/python"
