#!/usr/bin/env bash
# CPU AdamW: tidepool's kernel next to torch.optim.AdamW (fused, foreach)
# and DeepSpeed's CPU Adam, with the machine's bandwidth bound, one table.
#
#   bench/adam/run.sh                      # 256M params, every CPU
#   bench/adam/run.sh --n 67108864 --threads 8 --iters 3
#
# Options: --n N, --iters K, --threads T (0: all), --no-install (do not
# create the Python venv), --bench-adam PATH (a prebuilt bench_adam).
# Environment: BUILD_DIR (default build-bench), PYTHON (an interpreter that
# already has torch), TIDEPOOL_BENCH_VENV (default
# ~/.cache/tidepool/bench-venv; torch and deepspeed are pip-installed there
# from the default index when no interpreter at hand imports torch).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
n=$((256 << 20))
iters=5
threads=0
install=1
bench_adam=""
while [ $# -gt 0 ]; do
  case "$1" in
    --n) n=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    --bench-adam) bench_adam=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ "$threads" -gt 0 ] || threads=$(nproc)

if [ -z "$bench_adam" ]; then
  build=${BUILD_DIR:-$repo/build-bench}
  if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  cmake --build "$build" -j"$(nproc)" --target bench_adam >/dev/null
  bench_adam=$build/bin/bench_adam
fi

# An interpreter with torch: $PYTHON, else python3, else the bench venv.
py=${PYTHON:-}
if [ -z "$py" ] && python3 -c 'import torch' >/dev/null 2>&1; then py=python3; fi
if [ -z "$py" ]; then
  venv=${TIDEPOOL_BENCH_VENV:-$HOME/.cache/tidepool/bench-venv}
  if [ ! -x "$venv/bin/python" ] && [ "$install" = 1 ]; then
    echo "creating $venv with torch and deepspeed (pip, default index)..." >&2
    python3 -m venv "$venv"
  fi
  if [ -x "$venv/bin/python" ]; then
    if ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1 && [ "$install" = 1 ]; then
      "$venv/bin/pip" install -q torch >&2 || echo "pip install torch failed" >&2
    fi
    if ! "$venv/bin/python" -c 'import deepspeed' >/dev/null 2>&1 && [ "$install" = 1 ]; then
      "$venv/bin/pip" install -q deepspeed ninja >&2 ||
        echo "pip install deepspeed failed" >&2
    fi
    py=$venv/bin/python
  else
    py=python3
  fi
fi

results=$(mktemp)
trap 'rm -f "$results"' EXIT
echo "bench_adam: n=$n threads=$threads iters=$iters" >&2
"$bench_adam" --n="$n" --threads="$threads" --iters="$iters" --tsv >>"$results"
echo "peers: $py" >&2
OMP_NUM_THREADS=$threads "$py" "$here/peers.py" bench --n "$n" --iters "$iters" \
  --threads "$threads" >>"$results" || echo "skip	peers	peers.py failed" >>"$results"
python3 "$here/peers.py" table "$results"
