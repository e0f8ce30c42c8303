# Helpers of the packaging tests (sourced). Every test works in its own
# scratch directory, never in the build tree: it installs from the build
# tree it is given (cmake --install, cpack), which it does not rebuild.
set -euo pipefail
# (With pipefail, `cmd | grep -q` can fail when grep exits before cmd has
# written everything: the tests match on captured output instead.)

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# make_scratch NAME: a fresh directory, removed at exit together with the
# daemons started by start_daemon.
daemon_pids=()
make_scratch() {
  scratch=$(mktemp -d "/tmp/tidepool-$1-XXXXXX")
  trap cleanup EXIT
}
cleanup() {
  for pid in "${daemon_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$scratch"
}

# stage_install BUILD DESTDIR PREFIX: what `cmake --install` puts there.
stage_install() {
  DESTDIR="$2" cmake --install "$1" --prefix "$3" >"$scratch/install.log"
}

# verify_unit ROOT UNIT: systemd-analyze verify of UNIT (a path under ROOT)
# as if ROOT were /, so that ExecStart must name ROOT's binary. verify
# loads the unit's whole start transaction (sysinit.target, ...), which an
# install root does not hold: a copy of ROOT (hard links) gets this
# machine's unit files beside it. Any output fails, as verify exits 0 for
# some problems.
verify_unit() {
  local vroot=$scratch/verify-root
  rm -rf "$vroot"
  cp -al "$1" "$vroot"
  mkdir -p "$vroot/usr/lib/systemd/system"
  cp -an /usr/lib/systemd/system/. "$vroot/usr/lib/systemd/system/"
  local out
  out=$(systemd-analyze --root="$vroot" verify "$vroot/${2#"$1"}" 2>&1 ||
        echo "exit $?")
  rm -rf "$vroot"
  [ -z "$out" ] || fail "systemd-analyze verify ${2#"$1"}: $out"
  echo "systemd-analyze verify ${2#"$1"}: ok"
}

# small_config IN OUT: the installed configuration with a pool this machine
# can spare and no metrics port (tests run in parallel), so that the daemon
# under test reads the file the install shipped.
small_config() {
  sed -e 's/^host_pool_bytes = .*/host_pool_bytes = "64MiB"/' \
      -e 's/^metrics_address = .*/metrics_address = ""/' \
      -e 's/^chunk_size_bytes = .*/chunk_size_bytes = "1MiB"/' "$1" >"$2"
  grep -q '^host_pool_bytes = "64MiB"' "$2" || fail "$1 has no host_pool_bytes"
}

# wait_for_sockets PID SOCKET FD_SOCKET: until the daemon listens (it binds
# the gRPC socket last), or fail if it exits first.
wait_for_sockets() {
  local i
  for i in $(seq 600); do
    if [ -S "$2" ] && [ -S "$3" ]; then
      return 0
    fi
    kill -0 "$1" 2>/dev/null || fail "tidepoold exited during start-up"
    sleep 0.1
  done
  fail "tidepoold did not create $2 within 60 s"
}

# start_daemon BINARY CONFIG RUNDIR [WRAPPER...]: tidepoold on the sim
# device with its sockets in RUNDIR; sets daemon_pid, socket.
start_daemon() {
  local binary=$1 config=$2 rundir=$3
  shift 3
  socket=$rundir/tidepoold.sock
  "$@" "$binary" --config="$config" --device=sim --sim_capacity=16MiB \
    --socket="$socket" --fd_socket="$rundir/tidepoold.fd.sock" \
    >"$scratch/daemon.log" 2>&1 &
  daemon_pid=$!
  daemon_pids+=("$daemon_pid")
  wait_for_sockets "$daemon_pid" "$socket" "$rundir/tidepoold.fd.sock"
}

# stop_daemon: SIGTERM, as systemctl stop sends it; the daemon must exit 0.
stop_daemon() {
  kill -TERM "$daemon_pid"
  local rc=0
  wait "$daemon_pid" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$scratch/daemon.log" >&2; fail "tidepoold exited $rc on SIGTERM"; }
}

# run_trainer BINARY [WRAPPER...]: the consumer trainer against $socket.
run_trainer() {
  local binary=$1
  shift
  local store
  store=$(mktemp -d "$scratch/gloo-XXXXXX")
  chmod 0777 "$store"
  local out
  out=$("$@" "$binary" "$socket" "$store" 2>&1) ||
    fail "$(basename "$binary"): $out"
  case "$out" in
    "trainer ok"*) echo "$(basename "$binary"): $out" ;;
    *) fail "$(basename "$binary") printed: $out" ;;
  esac
}

# pkg_config_trainer PKG_CONFIG_LIBDIR SOURCE OUT [static]: the consumer
# trainer built with nothing but pkg-config's flags (static: libtidepool's
# archives and their Libs.private / Requires.private).
pkg_config_trainer() {
  local pcdir=$1 source=$2 out=$3 mode=${4:-shared}
  local cflags libs libdir
  cflags=$(PKG_CONFIG_PATH=$pcdir pkg-config --cflags tidepool-optim)
  libdir=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=libdir tidepool)
  if [ "$mode" = static ]; then
    # -l would pick the .so beside the .a: ask for the archives by name.
    libs=$(PKG_CONFIG_PATH=$pcdir pkg-config --static --libs tidepool-optim)
    libs=$(echo " $libs " | sed -e 's/ -ltidepool_optim / -l:libtidepool_optim.a /' \
                                -e 's/ -ltidepool / -l:libtidepool.a /')
    case "$libs" in
      *libtidepool_optim.a*libtidepool.a*) ;;
      *) fail "pkg-config --static --libs tidepool-optim: $libs" ;;
    esac
  else
    libs="$(PKG_CONFIG_PATH=$pcdir pkg-config --libs tidepool-optim) -Wl,-rpath,$libdir"
  fi
  # shellcheck disable=SC2086  # pkg-config output is a list of flags
  c++ -std=c++20 -O1 "$source" -o "$out" $cflags $libs
}
