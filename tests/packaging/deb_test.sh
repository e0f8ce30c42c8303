#!/usr/bin/env bash
# The Debian packages: cpack from the build tree (no rebuild), dpkg-deb's
# view of them, lintian (errors fail, warnings are printed), then dpkg
# installs them into a scratch root with their maintainer scripts (dpkg
# --root, the scripts honour DPKG_ROOT), where the files, the tidepool user
# and the configuration's ownership must be what docs/operations.md says;
# the packaged daemon and tidepoolctl run from there, and a purge leaves
# nothing behind.
#
# usage: deb_test.sh BUILD_DIR
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
build=$1
make_scratch deb
for tool in cpack dpkg-deb dpkg-shlibdeps fakeroot; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/setup.sh installs it)"
done

# CPACK_PACKAGE_DIRECTORY (-B) keeps CPack's staging out of the build tree.
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$scratch/out" \
  >"$scratch/cpack.log" 2>&1 || { cat "$scratch/cpack.log" >&2; fail cpack; }
shopt -s nullglob
debs=("$scratch"/out/*.deb)
[ ${#debs[@]} -eq 3 ] || fail "cpack made ${#debs[@]} packages: ${debs[*]}"
deb_of() {
  local f
  for f in "${debs[@]}"; do
    case "$(basename "$f")" in "$1"_*) echo "$f"; return ;; esac
  done
  fail "no $1 package among ${debs[*]}"
}
daemon_deb=$(deb_of tidepoold)
runtime_deb=$(deb_of libtidepool0)
dev_deb=$(deb_of libtidepool-dev)

field() { dpkg-deb --field "$1" "$2"; }
# Depends come from dpkg-shlibdeps: the Debian packages of the libraries
# the binaries link, whatever they are now (gRPC, Abseil, ...).
depends=$(field "$daemon_deb" Depends)
echo "tidepoold Depends: $depends"
for p in libc6 libgrpc++ libprotobuf libabsl libsystemd0 'systemd |'; do
  case "$depends" in *"$p"*) ;; *) fail "tidepoold Depends lacks $p: $depends" ;; esac
done
case "$(field "$runtime_deb" Depends)" in
  *libgrpc++*) ;; *) fail "libtidepool0 Depends: $(field "$runtime_deb" Depends)" ;;
esac
case "$(field "$dev_deb" Depends)" in
  *"libtidepool0 (= $(field "$runtime_deb" Version))"*) ;;
  *) fail "libtidepool-dev Depends: $(field "$dev_deb" Depends)" ;;
esac
grep -qx './conffiles' <<<"$(dpkg-deb --ctrl-tarfile "$daemon_deb" | tar -t)" ||
  fail "tidepoold has no conffiles"
[ "$(dpkg-deb --info "$daemon_deb" conffiles)" = /etc/tidepool/tidepoold.toml ] ||
  fail "tidepoold conffiles: $(dpkg-deb --info "$daemon_deb" conffiles)"
grep -q '^libtidepool 0 libtidepool0 (= ' <<<"$(dpkg-deb --info "$runtime_deb" shlibs)" ||
  fail "libtidepool0 shlibs: $(dpkg-deb --info "$runtime_deb" shlibs)"

if command -v lintian >/dev/null; then
  # --fail-on error: warnings (no manual pages, ...) are printed, not fatal.
  lintian --fail-on error --no-tag-display-limit "${debs[@]}" >"$scratch/lintian.txt" 2>&1 ||
    { cat "$scratch/lintian.txt" >&2; fail "lintian reports errors"; }
  cat "$scratch/lintian.txt"
  echo "lintian: no errors"
else
  echo "lintian not installed: packages not linted" >&2
fi

# Install into a scratch root with the maintainer scripts (chrootless:
# the root has no shell of its own). Needs root for the ownership.
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: dpkg --root not tried" >&2
  exit 0
fi
r=$scratch/root
mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/etc"
touch "$r/var/lib/dpkg/status"
dpkg_r() {
  dpkg --root="$r" --force-script-chrootless --force-depends \
    --log=/dev/null "$@" >>"$scratch/dpkg.log" 2>&1 ||
    { cat "$scratch/dpkg.log" >&2; fail "dpkg $*"; }
}
dpkg_r -i "${debs[@]}"
for p in tidepoold libtidepool0 libtidepool-dev; do
  grep -qx 'Status: install ok installed' <<<"$(dpkg --root="$r" -s "$p")" ||
    fail "$p is not installed in the scratch root"
done

# The layout docs/operations.md describes. The libraries' directory is
# /usr/lib, or the multiarch one for a build tree configured for /usr.
lib=usr/lib
[ -e "$r/$lib/libtidepool.so.0" ] || lib=usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
for f in usr/bin/tidepoold usr/bin/tidepoolctl \
         usr/lib/systemd/system/tidepoold.service usr/lib/sysusers.d/tidepool.conf \
         etc/tidepool/tidepoold.toml usr/share/doc/tidepoold/copyright \
         usr/share/doc/tidepoold/operations.md $lib/libtidepool.so.0 \
         $lib/libtidepool_optim.so.0 $lib/libtidepool.so $lib/libtidepool.a \
         usr/include/tidepool/session.h $lib/cmake/tidepool/tidepool-config.cmake \
         $lib/pkgconfig/tidepool.pc; do
  [ -e "$r/$f" ] || fail "the packages did not install /$f"
done
grep -qx 'ExecStart=/usr/bin/tidepoold --config=/etc/tidepool/tidepoold.toml' \
  "$r/usr/lib/systemd/system/tidepoold.service" ||
  fail "packaged unit: $(grep ExecStart= "$r/usr/lib/systemd/system/tidepoold.service")"
# The postinst made the user and group (systemd-sysusers) and gave the
# configuration to the group (dpkg-statoverride).
grep -q '^tidepool:' "$r/etc/passwd" || fail "postinst made no tidepool user"
gid=$(awk -F: '$1 == "tidepool" { print $3 }' "$r/etc/group")
[ -n "$gid" ] || fail "postinst made no tidepool group"
[ "$(stat -c '%a %u %g' "$r/etc/tidepool")" = "750 0 $gid" ] ||
  fail "/etc/tidepool: $(stat -c '%a %u %g' "$r/etc/tidepool"), want 750 0 $gid"
[ "$(stat -c '%a %u %g' "$r/etc/tidepool/tidepoold.toml")" = "640 0 $gid" ] ||
  fail "tidepoold.toml: $(stat -c '%a %u %g' "$r/etc/tidepool/tidepoold.toml")"
[ "$(stat -c '%a' "$r/usr/bin/tidepoold")" = 755 ] || fail "tidepoold mode"

if command -v systemd-analyze >/dev/null; then
  verify_unit "$r" "$r/usr/lib/systemd/system/tidepoold.service"
fi

# The packaged (stripped) binaries run, with the packaged configuration.
small_config "$r/etc/tidepool/tidepoold.toml" "$scratch/tidepoold.toml"
mkdir -m 0750 "$scratch/run"
start_daemon "$r/usr/bin/tidepoold" "$scratch/tidepoold.toml" "$scratch/run"
"$r/usr/bin/tidepoolctl" --socket="$socket" status >"$scratch/status.txt" ||
  fail "tidepoolctl status: $(cat "$scratch/status.txt")"
grep -q sim "$scratch/status.txt" || fail "tidepoolctl status: $(cat "$scratch/status.txt")"
stop_daemon

# pkg-config finds the packaged library through the .pc's own location.
[ "$(PKG_CONFIG_PATH=$r/$lib/pkgconfig pkg-config --variable=libdir tidepool)" \
   -ef "$r/$lib" ] || fail "tidepool.pc libdir"

# Upgrade path: reinstalling keeps the edited conffile and its ownership.
echo '# edited by the operator' >>"$r/etc/tidepool/tidepoold.toml"
dpkg_r --force-confold -i "$daemon_deb"
grep -q '^# edited by the operator' "$r/etc/tidepool/tidepoold.toml" ||
  fail "reinstall replaced the edited configuration"
[ "$(stat -c '%a %g' "$r/etc/tidepool/tidepoold.toml")" = "640 $gid" ] ||
  fail "reinstall: tidepoold.toml $(stat -c '%a %g' "$r/etc/tidepool/tidepoold.toml")"

dpkg_r --purge libtidepool-dev libtidepool0 tidepoold
# Nothing is left but the tidepool account (systemd-sysusers' databases
# and their lock file), which Debian keeps after a purge.
left=$(cd "$r" && find . -path ./var -prune -o ! -type d -print | grep -v '^./etc/\(passwd\|group\|shadow\|gshadow\|.pwd.lock\)' || true)
[ -z "$left" ] || fail "purge left: $left"
[ ! -e "$r/etc/tidepool" ] || fail "purge left /etc/tidepool"
[ -z "$(dpkg-statoverride --root="$r" --list)" ] || fail "purge left statoverrides"
echo "deb test passed"
