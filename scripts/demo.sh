#!/usr/bin/env bash
# The main job: start tidepoold (cuda backend on a GPU server, sim elsewhere)
# on a private socket, train a model 4x larger than its device pool through
# it, and stop it again.
set -euo pipefail
build=${1:-build}
bin=$build/bin
dir=$(mktemp -d /tmp/tidepool-demo-XXXXXX)
socket=$dir/tidepoold.sock
log=$dir/tidepoold.log

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  # The GPU's pool is capped at 512 MiB so that a 4x model trains in
  # seconds (the demo's arithmetic runs on the CPU).
  device_args=(--device=auto --device_pool=${TIDEPOOL_DEMO_POOL:-512MiB}
               --host_pool=4GiB --chunk_size=32MiB)
  trainer_args=(--layers=${TIDEPOOL_DEMO_LAYERS:-520} --width=1024 --steps=3)
else
  device_args=(--device=sim --sim_capacity=64MiB --host_pool=1GiB
               --chunk_size=16MiB)
  trainer_args=(--layers=64 --width=1024)
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
"$bin/stream_trainer" --socket="$socket" "${trainer_args[@]}" "$@"
