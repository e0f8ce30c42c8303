#!/usr/bin/env bash
# `cmake --install` into a staging tree (DESTDIR, prefix /usr/local), then
# what a user does with it: build a trainer out of tree with
# find_package(tidepool) (shared and static) and with pkg-config (shared
# and static), start the installed tidepoold on the sim device with the
# installed configuration, and run every trainer against it.
#
# usage: install_test.sh BUILD_DIR
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
build=$1
make_scratch install
stage=$scratch/stage
prefix=/usr/local
root=$stage$prefix

stage_install "$build" "$stage" "$prefix"

# Where GNUInstallDirs and docs/operations.md say the files go.
for f in bin/tidepoold bin/tidepoolctl \
         lib/libtidepool.so.0 lib/libtidepool.a lib/libtidepool_optim.so.0 \
         lib/libtidepool_optim.a include/tidepool/session.h \
         include/tidepool/optimizer.h lib/cmake/tidepool/tidepool-config.cmake \
         lib/pkgconfig/tidepool.pc lib/pkgconfig/tidepool-optim.pc \
         lib/systemd/system/tidepoold.service lib/sysusers.d/tidepool.conf \
         etc/tidepool/tidepoold.toml share/doc/tidepoold/operations.md \
         share/doc/libtidepool-dev/build.md; do
  [ -e "$root/$f" ] || fail "cmake --install did not install $prefix/$f"
done
[ -x "$root/bin/tidepoold" ] || fail "tidepoold is not executable"
# The unit starts the binary and reads the configuration this prefix has.
grep -qx "ExecStart=$prefix/bin/tidepoold --config=$prefix/etc/tidepool/tidepoold.toml" \
  "$root/lib/systemd/system/tidepoold.service" ||
  fail "installed unit: $(grep ExecStart= "$root/lib/systemd/system/tidepoold.service")"
# No file outside the prefix (a DESTDIR install must stay in it).
outside=$(cd "$stage" && find . -type f ! -path ".$prefix/*")
[ -z "$outside" ] || fail "installed outside $prefix: $outside"

# The installed unit passes systemd-analyze verify, its ExecStart included.
if command -v systemd-analyze >/dev/null; then
  verify_unit "$stage" "$root/lib/systemd/system/tidepoold.service"
fi

# Out-of-tree consumers, against the staging tree only.
consumer=$here/consumer
cmake -S "$consumer" -B "$scratch/consumer" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$root" >"$scratch/consumer-configure.log" 2>&1 ||
  { cat "$scratch/consumer-configure.log" >&2; fail "find_package(tidepool) consumer: configure"; }
cmake --build "$scratch/consumer" -j2 >"$scratch/consumer-build.log" 2>&1 ||
  { cat "$scratch/consumer-build.log" >&2; fail "find_package(tidepool) consumer: build"; }
pkg_config_trainer "$root/lib/pkgconfig" "$consumer/trainer.cc" "$scratch/trainer_pc"
pkg_config_trainer "$root/lib/pkgconfig" "$consumer/trainer.cc" \
  "$scratch/trainer_pc_static" static

# The shared trainers load the staged libraries; the static ones none.
for t in "$scratch/consumer/trainer_shared" "$scratch/trainer_pc"; do
  grep -q "libtidepool_optim.so.0 => $root/lib/" <<<"$(ldd "$t")" ||
    fail "$(basename "$t") does not load the installed libtidepool_optim: $(ldd "$t" | grep tidepool)"
done
for t in "$scratch/consumer/trainer_static" "$scratch/trainer_pc_static"; do
  if grep -q libtidepool <<<"$(ldd "$t")"; then
    fail "$(basename "$t") links a shared libtidepool: $(ldd "$t" | grep tidepool)"
  fi
done

small_config "$root/etc/tidepool/tidepoold.toml" "$scratch/tidepoold.toml"
mkdir -m 0750 "$scratch/run"
start_daemon "$root/bin/tidepoold" "$scratch/tidepoold.toml" "$scratch/run"
for t in consumer/trainer_shared consumer/trainer_static trainer_pc \
         trainer_pc_static; do
  run_trainer "$scratch/$t"
done
"$root/bin/tidepoolctl" --socket="$socket" status >"$scratch/status.txt" ||
  fail "tidepoolctl status: $(cat "$scratch/status.txt")"
stop_daemon
echo "install test passed"
