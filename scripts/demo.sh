#!/usr/bin/env bash
# The main job (`make demo`): start tidepoold on a private socket, train a
# Hugging Face causal LM (OPT from its config class, random init) on real
# text through tidepool.torch under the `auto` policy, with a model state
# (bf16 parameters, or fp32 on a CPU without native bf16 matmul, + fp32
# master + Adam m and v: 14 or 16 bytes a parameter)
# several times the daemon's device pool; train the same model on the same
# batches without tidepool (the same mixed-precision recipe in plain
# PyTorch), print a summary, write the two loss curves to
# demo-output/loss_opt_auto.png, and fail when the curves differ beyond
# tolerance. The daemon stops at exit.
#
#   scripts/demo.sh [BUILD_DIR] [train_hf.py flags...]   (make demo passes build)
#
# On a machine where `nvidia-smi -L` answers, tidepoold runs the cuda
# backend with its pool capped (TIDEPOOL_DEMO_POOL) so that the model does
# not fit, and the model and the baseline compute on the GPU. Elsewhere the
# sim backend stands in: a shared-memory "device" of 2 MiB slots.
# Environment: TIDEPOOL_DEMO_POOL, TIDEPOOL_DEMO_STEPS, TIDEPOOL_DEMO_HIDDEN,
# TIDEPOOL_DEMO_LAYERS, TIDEPOOL_DEMO_SEQ, TIDEPOOL_DEMO_BATCH,
# TIDEPOOL_DEMO_OUT (default ./demo-output), TIDEPOOL_PYTHON (interpreter).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build}
[ $# -gt 0 ] && shift
build=$(cd "$build" && pwd)
bin=$build/bin
py=$("$repo/scripts/python_env.sh")
dir=$(mktemp -d /tmp/tidepool-demo-XXXXXX)
socket=$dir/run/tidepoold.sock  # a directory of its own: the daemon owns it
log=$dir/tidepoold.log

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  # OPT 8 x 512 (27 M parameters, 0.38 GB of state) through a 64 MiB pool:
  # ~6x. Unverified on hardware so far.
  device_args=(--device=auto --device_pool=${TIDEPOOL_DEMO_POOL:-64MiB} --host_pool=4GiB
               --chunk_size=2MiB)
  model_args=(--hidden=${TIDEPOOL_DEMO_HIDDEN:-512} --layers=${TIDEPOOL_DEMO_LAYERS:-8}
              --seq=${TIDEPOOL_DEMO_SEQ:-128} --batch=${TIDEPOOL_DEMO_BATCH:-8})
else
  # OPT 4 x 256 (4.2 M parameters, 57 MiB of state) through four 2 MiB
  # slots: 7x. Torch on one thread (the daemon's CPU Adam has its own).
  device_args=(--device=sim --sim_capacity=${TIDEPOOL_DEMO_POOL:-8MiB} --host_pool=1GiB
               --chunk_size=2MiB)
  model_args=()
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

"$bin/tidepoold" --socket="$socket" "${device_args[@]}" >"$log" 2>&1 &
daemon=$!
cleanup() {
  status=$?
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  if [ "$status" -ne 0 ] && [ -s "$log" ]; then
    echo "--- tidepoold log (last lines) ---" >&2; tail -n 20 "$log" >&2
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq 200); do
  [ -S "$socket" ] && break
  kill -0 "$daemon" 2>/dev/null || { cat "$log" >&2; echo "tidepoold failed to start" >&2; exit 1; }
  sleep 0.05
done
[ -S "$socket" ] || { cat "$log" >&2; echo "tidepoold did not open $socket" >&2; exit 1; }
echo "tidepoold running (pid $daemon, ${device_args[*]})" >&2

start=$(date +%s)
set +e
PYTHONPATH="$build/python${PYTHONPATH:+:$PYTHONPATH}" TIDEPOOL_SOCKET="$socket" \
  "$py" "$repo/examples/hf/train_hf.py" --socket="$socket" --policy=auto \
  "${model_args[@]}" "$@"
rc=$?
set -e
echo "demo: $(( $(date +%s) - start )) s of training and checking, exit $rc" >&2
exit $rc
