#!/usr/bin/env bash
# The main job: start tidepoold (cuda backend on a GPU server, sim elsewhere)
# on a private socket, train a model whose parameters plus optimizer states
# are 4x its device pool through it with the sharded AdamW (bf16 parameters,
# fp32 master and moments), check the loss curve against the same model
# trained in plain memory, and stop the daemon again.
set -euo pipefail
build=${1:-build}
bin=$build/bin
dir=$(mktemp -d /tmp/tidepool-demo-XXXXXX)
socket=$dir/tidepoold.sock
log=$dir/tidepoold.log

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  # The GPU's pool is capped so that a 4x model trains in seconds. The
  # trainer's layer math runs on the GPU (--math=auto picks cuBLAS on the
  # cuda backend; the in-memory reference stays on the CPU and is compared
  # within --cuda_tolerance), AdamW where the policy places it (cpu: the
  # host). Unverified on hardware: the device math has only been compiled;
  # pass --math=cpu for the older staged CPU path.
  device_args=(--device=auto --device_pool=${TIDEPOOL_DEMO_POOL:-32MiB}
               --host_pool=1GiB --chunk_size=2MiB)
  trainer_args=(--layers=${TIDEPOOL_DEMO_LAYERS:-148} --width=256
                --steps=${TIDEPOOL_DEMO_STEPS:-100})
else
  # The sim device's slots are 2 MiB (as VMM on an H100). The optimizer
  # state stays in host memory (updated in place by CPU AdamW), so the
  # parameters page through a 4 MiB pool: two chunks, what the trainer and
  # its optimizer worker hold at once.
  device_args=(--device=sim --sim_capacity=${TIDEPOOL_DEMO_POOL:-4MiB} --host_pool=512MiB
               --chunk_size=2MiB)
  trainer_args=(--layers=37 --width=256 --steps=${TIDEPOOL_DEMO_STEPS:-200})
fi

"$bin/tidepoold" --socket="$socket" "${device_args[@]}" >"$log" 2>&1 &
daemon=$!
cleanup() { kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 200); do
  [ -S "$socket" ] && break
  kill -0 "$daemon" 2>/dev/null || { cat "$log"; echo "tidepoold failed to start" >&2; exit 1; }
  sleep 0.05
done
echo "tidepoold running (pid $daemon, log $log)"
"$bin/sharded_trainer" --socket="$socket" "${trainer_args[@]}" "$@"
