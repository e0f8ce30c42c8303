#!/usr/bin/env bash
# bench/hf/run.sh [bench_hf.py flags...]: the PyTorch/HF benchmark on a GPU
# machine: OPT-1.3B and OPT-2.7B in plain PyTorch, FSDP2 with
# CPUOffloadPolicy and tidepool (auto) through a tidepoold on the cuda
# backend whose device pool is capped at 1/3 of the model's 16 bytes/param
# state. bench_hf.py starts that daemon for each tidepool run (the pool is
# sized to the model, and the host pool, pinned in full at start, is only
# held while tidepool runs, not beside FSDP2's pinned CPU state) and stops
# it after the run; this script finds the pieces and makes sure nothing is
# left behind.
#
# Environment:
#   TIDEPOOL_BIN_DIR   where tidepoold is (default: .carry/bin, then build/bin)
#   PYTHON             interpreter with torch + transformers (default python3)
#   PYTHONPATH         must reach the tidepool package (e.g. .carry/python)
#   OUT                logs and results.jsonl (default /tmp/bench-hf-out)
#   TIDEPOOL_HF_BUDGET_S (240), TIDEPOOL_HF_RUNS, TIDEPOOL_HF_MODELS,
#   TIDEPOOL_HF_CONFIGS, TIDEPOOL_HF_WARMUP (2), TIDEPOOL_HF_STEPS (3),
#   TIDEPOOL_HF_POOL_FRACTION (0.333), TIDEPOOL_HF_DEVICE (cuda:0):
#   see bench_hf.py --help.
#
#   bench/hf/run.sh --smoke     # here, on the CPU: tiny OPT, sim backend
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${TIDEPOOL_BIN_DIR:-}
if [ -z "$bin" ]; then
  for d in "$root/.carry/bin" "$root/build/bin"; do
    [ -x "$d/tidepoold" ] && { bin=$d; break; }
  done
fi
if [ -z "$bin" ] || [ ! -x "$bin/tidepoold" ]; then
  echo "bench/hf: no tidepoold in ${bin:-.carry/bin or build/bin} (set TIDEPOOL_BIN_DIR)" >&2
  exit 2
fi
py=${PYTHON:-python3}
out=${OUT:-/tmp/bench-hf-out}
mkdir -p "$out"
rm -f "$out/tidepoold.pids"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
# Cheap (no torch import): the package is on the path.
if ! "$py" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("tidepool") is None)' 2>/dev/null; then
  echo "bench/hf: $py does not find the tidepool package (PYTHONPATH=${PYTHONPATH:-})" >&2
  exit 2
fi

# bench_hf.py stops its daemons itself (also on SIGTERM); this catches a
# tidepoold of ours that outlived it (e.g. the interpreter was killed).
"$py" -u "$here/bench_hf.py" --tidepoold "$bin/tidepoold" --out "$out" "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' TERM INT HUP
wait $pid
rc=$?
# A second wait: the first one returns early when a trapped signal arrives.
kill -0 $pid 2>/dev/null && { wait $pid; rc=$?; }
if [ -f "$out/tidepoold.pids" ]; then
  while read -r p; do
    [ -n "$p" ] && [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$bin/tidepoold")" ] || continue
    echo "bench/hf: stopping a leftover tidepoold (pid $p)" >&2
    kill -TERM "$p" 2>/dev/null
  done < "$out/tidepoold.pids"
  rm -f "$out/tidepoold.pids"
fi
exit $rc
