#!/usr/bin/env bash
# Does tidepoold work under the sandbox its installed unit asks for? There
# is no systemd PID 1 here (systemd-run cannot start the unit), so this
# test builds the parts of that sandbox that plain Linux tools can, from
# the values in the installed unit, and runs the installed daemon and a
# trainer in it:
#
#   User=, Group=            setpriv to unused numeric ids
#   NoNewPrivileges=yes      setpriv --no-new-privs
#   CapabilityBoundingSet=   setpriv --bounding-set=-all --inh-caps=-all
#   UMask=, LimitNOFILE=     umask, ulimit -n (capped at this machine's
#                            hard limit)
#   RuntimeDirectory=,       a tmpfs at /run/tidepool owned by the user,
#   RuntimeDirectoryMode=    with the unit's mode
#   PrivateTmp=yes           a fresh tmpfs at /tmp
#   ProtectSystem=strict     every other mount read-only (API file systems
#                            /proc, /sys, /dev excepted, as systemd does)
#   ProtectHome=yes          /root and /home empty and inaccessible
#   SystemCallFilter=,       strace records every system call and socket
#   RestrictAddressFamilies= family the daemon uses; each must be in the
#                            unit's filter (systemd-analyze syscall-filter)
#
# Then: sockets and directory have the modes docs/operations.md promises, a
# user in the daemon's group moves bytes, one outside it is refused, and
# SIGTERM stops the daemon cleanly. Not covered: DevicePolicy/DeviceAllow
# and the CUDA driver (no GPU here), ProtectKernel*, RestrictNamespaces,
# the other protections systemd applies itself.
#
# usage: hardening_test.sh BUILD_DIR
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
build=$1
if [ "$(id -u)" -ne 0 ]; then
  echo "needs root (mount namespace, setpriv): skipped" >&2
  exit 77
fi
for tool in unshare setpriv strace systemd-analyze python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/setup.sh installs it)"
done
make_scratch hardening
chmod 0755 "$scratch"
stage=$scratch/stage
stage_install "$build" "$stage" /usr
unit=$stage/usr/lib/systemd/system/tidepoold.service

# unit_value KEY: the last KEY= of the [Service] section.
unit_value() {
  sed -n "s/^$1=//p" "$unit" | tail -n 1
}
[ "$(unit_value NoNewPrivileges)" = yes ] || fail "unit: NoNewPrivileges"
[ "$(unit_value ProtectSystem)" = strict ] || fail "unit: ProtectSystem"
[ "$(unit_value PrivateTmp)" = yes ] || fail "unit: PrivateTmp"
[ "$(unit_value ProtectHome)" = yes ] || fail "unit: ProtectHome"
[ -z "$(unit_value CapabilityBoundingSet)" ] || fail "unit: CapabilityBoundingSet"
[ "$(unit_value RuntimeDirectory)" = tidepool ] || fail "unit: RuntimeDirectory"
umask_value=$(unit_value UMask)
runtime_mode=$(unit_value RuntimeDirectoryMode)
nofile=$(unit_value LimitNOFILE)
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt "$nofile" ]; then
  echo "LimitNOFILE=$nofile capped at this machine's hard limit $hard_nofile"
  nofile=$hard_nofile
fi

# A static trainer: nothing to load from paths the sandbox hides.
pkg_config_trainer "$stage/usr/lib/pkgconfig" "$here/consumer/trainer.cc" \
  "$scratch/trainer" static
small_config "$stage/etc/tidepool/tidepoold.toml" "$scratch/tidepoold.toml"
# The metrics endpoint on (on a free port), so that its TCP socket is
# under the address-family check too.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed -i "s|^socket = .*|socket = \"/run/tidepool/tidepoold.sock\"|;
        s|^fd_socket = .*|fd_socket = \"/run/tidepool/tidepoold.fd.sock\"|;
        s|^metrics_address = .*|metrics_address = \"127.0.0.1:$port\"|" \
  "$scratch/tidepoold.toml"
grep -q "^metrics_address = \"127.0.0.1:$port\"" "$scratch/tidepoold.toml" ||
  fail "metrics_address not set"
mkdir -m 0777 "$scratch/results"

daemon_uid=64101 group_gid=64102 member_uid=64103 outsider_uid=64104
cat >"$scratch/sandbox.sh" <<EOF
set -euo pipefail
s=/run/scratch
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir /run/scratch
mount --bind "$scratch" /run/scratch
mount --bind "$scratch/results" /run/scratch/results
mount -t tmpfs -o mode=1777 tmpfs /tmp
for d in /root /home; do
  [ -d \$d ] && mount -t tmpfs -o mode=000 tmpfs \$d
done
mkdir /run/tidepool
mount -t tmpfs -o mode=$runtime_mode,uid=$daemon_uid,gid=$group_gid tmpfs /run/tidepool
# ProtectSystem=strict: read-only but for the API file systems and the
# unit's writable places (/tmp, the runtime directory, our results).
awk '{ print \$5 }' /proc/self/mountinfo | while read -r mp; do
  case "\$mp" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp|/run/tidepool|/run/scratch/results) ;;
    *) mount -o remount,bind,ro "\$mp" 2>/dev/null || true ;;
  esac
done
if touch /etc/tidepool-sandbox-check 2>/dev/null || touch /usr/tidepool-sandbox-check 2>/dev/null; then
  echo "sandbox: the root file system is writable" >&2; exit 1
fi

ulimit -n $nofile
setpriv --reuid=$daemon_uid --regid=$group_gid --clear-groups --no-new-privs \
  --bounding-set=-all --inh-caps=-all \
  bash -c "umask $umask_value; exec strace -f -qq -o \$s/results/strace.txt \
    \$s/stage/usr/bin/tidepoold --config=\$s/tidepoold.toml --device=sim \
    --sim_capacity=16MiB" >\$s/results/daemon.log 2>&1 &
pid=\$!
for i in \$(seq 600); do
  [ -S /run/tidepool/tidepoold.sock ] && [ -S /run/tidepool/tidepoold.fd.sock ] && break
  kill -0 \$pid 2>/dev/null || { echo "tidepoold exited" >&2; exit 1; }
  sleep 0.1
done
stat -c '%a %u %g' /run/tidepool >\$s/results/rundir.txt
stat -c '%a %u %g' /run/tidepool/tidepoold.sock /run/tidepool/tidepoold.fd.sock >\$s/results/sockets.txt
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())' \
  http://127.0.0.1:$port/metrics >\$s/results/metrics.txt 2>&1 || true
mkdir -m 0777 /tmp/gloo-member
setpriv --reuid=$member_uid --regid=$member_uid --groups=$group_gid --no-new-privs \
  \$s/trainer /run/tidepool/tidepoold.sock /tmp/gloo-member >\$s/results/member.txt 2>&1 || true
mkdir -m 0777 /tmp/gloo-outsider
setpriv --reuid=$outsider_uid --regid=$outsider_uid --clear-groups --no-new-privs \
  \$s/trainer /run/tidepool/tidepoold.sock /tmp/gloo-outsider >\$s/results/outsider.txt 2>&1 &&
  echo "outsider exit 0" >>\$s/results/outsider.txt
# SIGTERM to the daemon, strace's child; strace exits with its status.
daemon=\$(ps -o pid= --ppid \$pid | head -n 1)
kill -TERM \$daemon
rc=0
wait \$pid || rc=\$?
echo \$rc >\$s/results/daemon_rc.txt
EOF
unshare -m bash "$scratch/sandbox.sh" || {
  cat "$scratch/results/daemon.log" 2>/dev/null >&2
  fail "the sandbox script failed"
}
res=$scratch/results
[ "$(cat "$res/daemon_rc.txt")" = 0 ] ||
  { cat "$res/daemon.log" >&2; fail "tidepoold exited $(cat "$res/daemon_rc.txt") on SIGTERM"; }
[ "$(cat "$res/rundir.txt")" = "${runtime_mode#0} $daemon_uid $group_gid" ] ||
  fail "/run/tidepool: $(cat "$res/rundir.txt")"
while read -r mode uid gid; do
  [ "$mode $uid" = "660 $daemon_uid" ] || fail "socket: $mode $uid $gid, want 660 $daemon_uid"
done <"$res/sockets.txt"
case "$(cat "$res/member.txt")" in
  "trainer ok"*) echo "group member: $(cat "$res/member.txt")" ;;
  *) cat "$res/daemon.log" >&2; fail "trainer in the tidepool group: $(cat "$res/member.txt")" ;;
esac
# The directory (0750) already keeps others out; what the client says then
# is its own business (at present "no socket at ...").
case "$(cat "$res/outsider.txt")" in
  *"outsider exit 0"* | *"trainer ok"*) fail "a user outside the group opened a session" ;;
  *"trainer: Open: "*) echo "outside the group: refused ($(head -c 160 "$res/outsider.txt"))" ;;
  *) fail "outsider: $(cat "$res/outsider.txt")" ;;
esac

grep -q '^tidepool_build_info{' "$res/metrics.txt" ||
  fail "metrics endpoint in the sandbox: $(head -c 300 "$res/metrics.txt")"

# Every system call and address family the daemon used must pass the
# unit's filters.
systemd-analyze syscall-filter >"$scratch/filters.txt" 2>/dev/null
python3 - "$res/strace.txt" "$scratch/filters.txt" "$(unit_value SystemCallFilter)" \
  "$(unit_value RestrictAddressFamilies)" <<'PY'
import re, sys
trace, filters, syscall_filter, families = sys.argv[1:]
groups, current = {}, None
for line in open(filters):
    if line.startswith("@"):
        current = groups.setdefault(line.split()[0], [])
    elif current is not None and line.startswith("    ") and not line.strip().startswith("#"):
        current.append(line.strip())
def expand(name, seen=()):
    if not name.startswith("@"):
        return {name}
    if name not in groups:
        sys.exit(f"unknown syscall group {name}")
    out = set()
    for item in groups[name]:
        if item not in seen:
            out |= expand(item, seen + (name,))
    return out
allowed = set()
for token in syscall_filter.split():
    if token.startswith("~"):
        sys.exit(f"deny-list filters are not handled here: {token}")
    allowed |= expand(token)
used, used_families = set(), set()
call = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")
for line in open(trace):
    m = call.match(line)
    if not m or "+++" in line or "---" in line:
        continue
    used.add(m.group(1))
    f = re.match(r"^\d+\s+socket\((AF_[A-Z0-9]+)", line)
    if f:
        used_families.add(f.group(1))
# execve of the daemon itself happens before systemd applies the filter.
blocked = sorted(used - allowed - {"execve"})
print(f"{len(used)} system calls used, all in SystemCallFilter={syscall_filter}"
      if not blocked else "")
if blocked:
    sys.exit(f"system calls outside SystemCallFilter={syscall_filter}: {blocked}")
bad = sorted(used_families - set(families.split()))
if bad:
    sys.exit(f"address families outside RestrictAddressFamilies={families}: {bad}")
print(f"address families used: {sorted(used_families)}")
print("system calls:", " ".join(sorted(used)))
PY
echo "hardening test passed"
