#!/usr/bin/env bash
# scripts/gpu_check.sh: the GPU check, run ON the GPU test machine from the
# project root, with the bundle of `make gpu-bundle` in .carry/ (the device
# tool: carry [".carry"], command `bash scripts/gpu_check.sh`, timeout
# ~540 s). Everything goes under $OUT (the device tool sets it; default
# /tmp/gpucheck-out): one log per step and the report $OUT/report.md.
#
# Steps (each under its own timeout, all under one deadline, ~8 min; a
# failing step is reported and the next one runs):
#   0  environment; probe (IPC memory, VMM fd export/import, memfd +
#      cudaHostRegister in two processes, copy bandwidth);
#      ipc_event_probe (interprocess events both ways)
#   1  every gpu-labelled test (.carry/gpu_tests.tsv)
#   2  bench_transfer on the cuda backend
#   3  bench_latency: acquire+release pairs, hot path vs gRPC (sim backend,
#      on the GPU machine's idle cores)
#   3  acquire/release round trip (derived from step 2; no latency bench yet)
#   4  sharded_trainer --math=cuda under --policy=cpu and --policy=auto
#   5  bench_policy (sim backend only: it has no cuda mode)
#   6  bench_adam with torch's CPU AdamW beside it (bench/adam/run.sh)
#   7  gpu-marked Python tests, bench/hf/run.sh, where they exist
#
# Knobs (environment): GPU_CHECK_BUDGET_S (470), PYTHON (python3),
# ADAM_N (268435456), POLICY_ARGS, TRAINER_STEPS (100), CARRY (.carry).
# Without a GPU every GPU step fails within seconds and the report is still
# written.
set -u

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
OUT=${OUT:-/tmp/gpucheck-out}
mkdir -p "$OUT"
carry=$(cd "${CARRY:-.carry}" 2>/dev/null && pwd || echo "$root/.carry")
B=$carry/bin
SB=""  # line-buffered output, so that a crash keeps what was printed
command -v stdbuf >/dev/null 2>&1 && SB="stdbuf -oL"
PY=${PYTHON:-python3}
budget=${GPU_CHECK_BUDGET_S:-470}
t_start=$(date +%s)
deadline=$((t_start + budget))
results=$OUT/steps.tsv  # step, status, rc, seconds, log, note
: > "$results"
export TIDEPOOL_BIN_DIR=$B
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false

log() { printf '[gpu_check %4ds] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }

# Our own processes left behind by a step (e.g. a tidepoold whose test was
# killed by its timeout, or one a pytest started in its own session): every
# process running a binary from the carry.
ours() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    case "$exe" in "$B"/*) echo "${p#/proc/}" ;; esac
  done
}
sweep() {
  local pids
  pids=$(ours)
  [ -n "$pids" ] || return 0
  log "killing leftover processes: $(echo $pids)"
  kill -TERM $pids 2>/dev/null
  sleep 1
  pids=$(ours)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  return 0
}

# step NAME MAX_SECONDS COMMAND...: runs COMMAND (a bash -c string when it
# is one argument) in its own process group, under min(MAX, time left)
# seconds, output to $OUT/NAME.log; records the status. rc 124/137: timeout;
# rc 77: skipped by the program.
step() {
  local name=$1 max=$2; shift 2
  local now left t rc t0 status note=""
  now=$(date +%s)
  left=$((deadline - now - 3))
  t=$max
  [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -lt 5 ]; then
    printf '%s\tSKIPPED\t-\t0\t-\tno time left in the %ds budget\n' "$name" "$budget" >> "$results"
    log "$name: skipped (no time left)"
    return 0
  fi
  log "$name: running (limit ${t}s)"
  t0=$(date +%s.%N)
  if [ $# -eq 1 ]; then
    setsid timeout -k 5 "$t" bash -c "$1" > "$OUT/$name.log" 2>&1 < /dev/null &
  else
    setsid timeout -k 5 "$t" "$@" > "$OUT/$name.log" 2>&1 < /dev/null &
  fi
  local pid=$!
  wait "$pid"
  rc=$?
  kill -KILL -- "-$pid" 2>/dev/null
  sweep >> "$OUT/$name.log" 2>&1
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  case "$rc" in
    0) status=PASS ;;
    124|137) status=TIMEOUT; note="killed after ${t}s" ;;
    77) status=SKIPPED; note="the program skipped (no GPU?)" ;;
    *) status=FAIL ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$name.log" "$note" >> "$results"
  log "$name: $status (rc $rc, ${secs}s)"
  return 0
}
note() {  # note NAME STATUS TEXT: a step that did not run a command
  printf '%s\t%s\t-\t0\t-\t%s\n' "$1" "$2" "$3" >> "$results"
  log "$1: $2 ($3)"
}

# ---------------------------------------------------------------- step 0
step 00-environment 30 '
  echo "== uname"; uname -a; echo "== /proc/version"; cat /proc/version
  echo "== gVisor?"; (dmesg 2>/dev/null | head -3) || true
  grep -qi gvisor /proc/version 2>/dev/null && echo "running under gVisor"
  echo "== nvidia-smi"; nvidia-smi --query-gpu=name,uuid,memory.total,memory.used,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv 2>&1 || echo "nvidia-smi failed"
  echo "== cpus: $(nproc), mem: $(free -g 2>/dev/null | awk "/Mem:/{print \$2}") GiB"
  echo "== python: $('"$PY"' --version 2>&1)"
  '"$PY"' -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"\")" 2>&1 | tail -1
  echo "== bundle"; head -4 '"$carry"'/MANIFEST.txt 2>&1
  echo "== libraries the carried binaries do not find"
  missing=0
  for f in '"$B"'/* '"$carry"'/python/tidepool/*.so; do
    m=$(ldd "$f" 2>&1 | grep "not found" | sort -u | tr "\n" " ")
    [ -n "$m" ] && { echo "$(basename "$f"): $m"; missing=1; }
  done
  [ $missing = 0 ] && echo "none"
  nvidia-smi -L >/dev/null 2>&1 || { echo "no GPU answers (nvidia-smi -L failed)"; exit 1; }
'
if [ ! -d "$B" ]; then
  note 00-bundle FAIL "no $B: run make gpu-bundle on the build machine and carry .carry"
fi
# The probe exits 0 whatever it finds: the step fails on a FAIL line, on
# pattern errors or without its DONE line.
step 01-probe 75 "cd '$OUT' && $SB '$B/probe'; rc=\$?
  grep -q '^FAIL' '$OUT/01-probe.log' && exit 1
  grep -qE 'errors [1-9]' '$OUT/01-probe.log' && exit 1
  grep -q '^DONE' '$OUT/01-probe.log' || exit 1
  exit \$rc"
step 02-ipc-event-probe 30 "$SB '$B/ipc_event_probe'"

# ---------------------------------------------------------------- step 1
if [ -f "$carry/gpu_tests.tsv" ]; then
  while IFS=$'\t' read -r tname kind what; do
    [ -n "$tname" ] || continue
    case "$kind" in
      # A test binary whose every test skipped (GTEST_SKIP without a GPU)
      # is SKIPPED, not PASS.
      binary) step "10-test-$tname" 150 "cd '$OUT' && '$carry/$what' --gtest_color=no; rc=\$?
        [ \$rc = 0 ] && grep -q '^\[  PASSED  \] 0 tests' '$OUT/10-test-$tname.log' && exit 77
        exit \$rc" ;;
      pytest) step "10-test-$tname" 150 "PYTHONPATH='$carry/python' '$PY' -m pytest -q -p no:cacheprovider -m gpu '$root/$what'" ;;
    esac
  done < "$carry/gpu_tests.tsv"
else
  note 10-tests FAIL "no $carry/gpu_tests.tsv"
fi

# ---------------------------------------------------------------- step 2
# bench_transfer falls back to the sim backend without a GPU: the step
# fails as soon as its header says so.
step 20-bench-transfer 100 "
  $SB '$B/bench_transfer' --device=cuda:0 --sizes_mib=\${TRANSFER_SIZES:-2,4,16,64,256} --pool_mib=1024 --sweeps=3 &
  pid=\$!
  for i in \$(seq 100); do
    sleep 0.2
    if grep -q 'sim backend' '$OUT/20-bench-transfer.log' 2>/dev/null; then
      kill \$pid; echo 'bench_transfer fell back to the sim backend: no GPU answers'; exit 3
    fi
    grep -q 'cuda backend' '$OUT/20-bench-transfer.log' 2>/dev/null && break
    kill -0 \$pid 2>/dev/null || break
  done
  wait \$pid"

# ---------------------------------------------------------------- step 3
# The pair latency where cores are free (the 2-core machine never has one
# to spare for the spinning ends): resident and evicting pairs, 10 and
# 100k chunks, 1 / 4 / 16 sessions. Sim backend: it measures the daemon's
# bookkeeping and the hot path, not the device.
step 30-bench-latency 120 "cd '$OUT' && '$B/bench_latency' --chunks=\${LATENCY_CHUNKS:-10,100000} --sessions=1,4,16 --seconds=1 2>/dev/null &&
  '$B/bench_latency' --evicting --chunks=64,10000 --sessions=1,4 --seconds=1 2>/dev/null"

# ---------------------------------------------------------------- step 4
trainer() {  # trainer POLICY STEP: the demo's GPU configuration (scripts/demo.sh)
  cat <<EOF
dir=\$(mktemp -d /tmp/tidepool-check-XXXXXX)
'$B/tidepoold' --socket=\$dir/run/tidepoold.sock --device=cuda:0 --device_pool=\${TIDEPOOL_DEMO_POOL:-32MiB} \
  --host_pool=1GiB --chunk_size=2MiB > '$OUT/$2.daemon.log' 2>&1 &
daemon=\$!
for i in \$(seq 300); do
  [ -S \$dir/run/tidepoold.sock ] && break
  kill -0 \$daemon 2>/dev/null || { echo 'tidepoold exited:'; tail -5 '$OUT/$2.daemon.log'; exit 2; }
  sleep 0.05
done
[ -S \$dir/run/tidepoold.sock ] || { echo 'tidepoold did not start in 15 s'; exit 2; }
'$B/sharded_trainer' --socket=\$dir/run/tidepoold.sock --layers=148 --width=256 \
  --steps=${TRAINER_STEPS:-100} --math=cuda --policy=$1 --print_every=25
rc=\$?
kill \$daemon; wait \$daemon 2>/dev/null; rm -rf \$dir
exit \$rc
EOF
}
step 40-trainer-cpu 100 "$(trainer cpu 40-trainer-cpu)"
step 41-trainer-auto 100 "$(trainer auto 41-trainer-auto)"

# ---------------------------------------------------------------- step 5
step 50-bench-policy 90 "'$B/bench_policy' ${POLICY_ARGS:---models=opt-1.3b,llama2-7b --capacities=25,50}"

# ---------------------------------------------------------------- step 6
adam_py=$PY
"$PY" -c 'import torch' >/dev/null 2>&1 || adam_py=""
step 60-bench-adam 90 "PYTHON='${adam_py:-$PY}' bash '$root/bench/adam/run.sh' --bench-adam '$B/bench_adam' --no-install --n ${ADAM_N:-268435456} --iters 5"

# ---------------------------------------------------------------- step 7
pydirs=()
for d in tests/python client/python/tests; do
  [ -d "$d" ] && grep -rqs --include='*.py' "pytest.mark.gpu" "$d" && pydirs+=("$root/$d")
done
if [ ${#pydirs[@]} -gt 0 ]; then
  # pytest exit 5: nothing collected under -m gpu.
  step 70-python-gpu-tests 150 "PYTHONPATH='$carry/python' '$PY' -m pytest -q -p no:cacheprovider -m gpu ${pydirs[*]}; rc=\$?; [ \$rc = 5 ] && { echo 'no gpu-marked test collected'; exit 0; }; exit \$rc"
else
  note 70-python-gpu-tests SKIPPED "no gpu-marked Python tests (pytest.mark.gpu) in tests/python or client/python/tests"
fi
if [ -f bench/hf/run.sh ]; then
  mkdir -p "$OUT/hf"
  left=$((deadline - $(date +%s) - 10))
  step 71-bench-hf 300 "PYTHONPATH='$carry/python' PYTHON='$PY' OUT='$OUT/hf' TIDEPOOL_HF_BUDGET_S=$left bash '$root/bench/hf/run.sh'"
else
  note 71-bench-hf SKIPPED "no bench/hf/run.sh"
fi

# ---------------------------------------------------------------- report
report=$OUT/report.md
{
  total=$(( $(date +%s) - t_start ))
  echo "# tidepool GPU check"
  echo
  echo "$(date -u +%FT%TZ), $(uname -n), ${total} s of a ${budget} s budget."
  echo "Bundle: $(sed -n 2,3p "$carry/MANIFEST.txt" 2>/dev/null | tr '\n' ';' || echo 'no MANIFEST')"
  echo
  echo "| step | status | rc | seconds | note |"
  echo "|---|---|---|---|---|"
  while IFS=$'\t' read -r name status rc secs logf nt; do
    echo "| $name | **$status** | $rc | $secs | $nt |"
  done < "$results"
  echo
  # section NAME TITLE REGEX [LINES]: the figures of one step's log (the
  # lines matching REGEX, else its last lines).
  glog='^[IWEF][0-9]{8} [0-9:.]+ +[0-9]+ [a-z_]+\.cc:[0-9]+\]'
  section() {
    local f=$OUT/$1.log
    echo "## $2"
    echo
    if [ ! -f "$f" ]; then echo "(did not run)"; echo; return; fi
    echo '```'
    # glog lines of the daemons the programs start are left out.
    if grep -vE "$glog" "$f" | grep -qE "$3"; then grep -vE "$glog" "$f" | grep -E "$3" | head -n "${4:-60}" | cut -c1-400
    else echo "(no figures; last lines of $1.log)"; grep -vE "$glog" "$f" | tail -n 15 | cut -c1-400; fi
    echo '```'
    echo
  }
  section 00-environment "Environment" '.' 40
  section 01-probe "Probe: IPC memory, VMM fds, shared pinned memory, bandwidth" \
    '^(device:|RESULT|BW|FAIL|parent:|child:|cudaMalloc|DONE)'
  echo "Refused by this machine (FAIL lines of the probe, by call; a"
  echo "\"pattern errors 0\" after a FAIL line means nothing, the count itself failed):"
  echo
  if [ -f "$OUT/01-probe.log" ]; then
    grep -q 'error while loading shared libraries' "$OUT/01-probe.log" \
      && echo "- the probe did not start: $(grep -m1 'error while loading' "$OUT/01-probe.log")"
    if grep -q 'error while loading shared libraries' "$OUT/01-probe.log"; then :
    elif grep -q '^FAIL' "$OUT/01-probe.log"; then
      grep '^FAIL' "$OUT/01-probe.log" | sed -E 's/^FAIL [^ ]+ //' | sort | uniq -c \
        | awk '{c = $1; $1 = ""; print "-" $0 " (x" c ")"}' | head -30
    else
      echo "- none"
    fi
    grep -E 'errors [1-9]' "$OUT/01-probe.log" | sed 's/^/- wrong data: /'
    grep -q '^RESULT' "$OUT/01-probe.log" && grep '^RESULT' "$OUT/01-probe.log" | sed 's/^/- /'
    grep -q '^DONE' "$OUT/01-probe.log" || echo "- the probe did not finish (no DONE line)"
  fi
  echo
  section 02-ipc-event-probe "Interprocess events" '^(RESULT|FAIL|child|DONE)'
  for f in "$OUT"/10-test-*.log; do
    [ -f "$f" ] || continue
    n=$(basename "$f" .log)
    section "$n" "Test ${n#10-test-}" '^\[ *(PASSED|FAILED|SKIPPED|  OK|RUN) *\]|passed|failed|error|Failure|Value of|Actual|Expected|Which is|^tidepoold: |^[A-Z_]+: ' 80
  done
  section 20-bench-transfer "bench_transfer (cuda backend)" '^bench/transfer|chunk|MiB|fell back|rror'
  section 30-bench-latency "bench_latency (sim backend, this machine's cores)" '^bench/latency|^limits|^ +[0-9]|chunks|FAILED|rror' 60
  echo "## Acquire/release with a chunk load"
  echo
  echo "From bench_transfer's sweeps (every acquire loads a chunk, read-only release):"
  echo
  if [ -f "$OUT/20-bench-transfer.log" ] && grep -qE '^ *[0-9]+ MiB' "$OUT/20-bench-transfer.log"; then
    echo "| chunk | µs per acquire+release, hot path | µs, gRPC path | gRPC extra per op, µs |"
    echo "|---|---|---|---|"
    grep -E '^ *[0-9]+ MiB' "$OUT/20-bench-transfer.log" | awk '{
      b = $1 * 1048576; hot = $4; grpc = $5;
      th = hot > 0 ? b / (hot * 1e9) * 1e6 : 0; tg = grpc > 0 ? b / (grpc * 1e9) * 1e6 : 0;
      printf "| %s MiB | %.0f | %.0f | %.0f |\n", $1, th, tg, tg - th }'
  else
    echo "(no bench_transfer figures)"
  fi
  echo
  section 40-trainer-cpu "sharded_trainer --math=cuda --policy=cpu" \
    '^(tidepool sharded|  parameters|  \(layer|step|summary|  loss|  per rank|  moved|  block|  loss curve)|rror|exited|did not|^tidepoold: |^[A-Z_]+: '
  section 41-trainer-auto "sharded_trainer --math=cuda --policy=auto" \
    '^(tidepool sharded|  parameters|  \(layer|step|summary|  loss|  per rank|  moved|  block|  loss curve)|rror|exited|did not|^tidepoold: |^[A-Z_]+: '
  echo "(bench_policy replays on the sim backend; it has no cuda mode.)"
  echo
  section 50-bench-policy "bench_policy" '.' 80
  section 60-bench-adam "bench_adam (CPU AdamW) beside torch" '.' 40
  section 70-python-gpu-tests "gpu-marked Python tests" 'passed|failed|error|skipped|no gpu-marked' 30
  section 71-bench-hf "bench/hf" '.' 60
  echo "Logs: $(cd "$OUT" && ls *.log 2>/dev/null | tr '\n' ' ')"
} > "$report" 2>&1
log "report: $report"
cut -f1-4 "$results" | column -t 2>/dev/null || cat "$results"
exit 0
