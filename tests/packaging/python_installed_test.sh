#!/usr/bin/env bash
# The Python package built against an installed libtidepool: `cmake
# --install` into a staging tree, then `pip wheel` of the repository with
# TIDEPOOL_USE_INSTALLED=ON and that tree as CMAKE_PREFIX_PATH (no
# network, the project's cached environment), installed into a scratch
# folder. The extension must load the staged libtidepool_optim.so.0 and
# move bytes through the staged tidepoold.
#
# usage: python_installed_test.sh BUILD_DIR PYTHON
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
build=$1
python=$2
repo=$(cd "$here/../.." && pwd)
make_scratch python
stage=$scratch/stage
root=$stage/usr/local
stage_install "$build" "$stage" /usr/local

"$python" -m pip wheel --no-deps --no-build-isolation -q -w "$scratch/wheel" \
  -C build-dir="$scratch/build" -C cmake.define.TIDEPOOL_USE_INSTALLED=ON \
  -C cmake.define.CMAKE_PREFIX_PATH="$root" -C cmake.define.TIDEPOOL_WITH_CUDA=OFF \
  "$repo" >"$scratch/pip.log" 2>&1 || { cat "$scratch/pip.log" >&2; fail "pip wheel"; }
"$python" -m pip install --no-deps -q --target "$scratch/site" "$scratch"/wheel/tidepool-*.whl
# Linked, not rebuilt: the library the extension loads is the staged one.
core=$(ls "$scratch"/site/tidepool/_core*.so)
grep -q "libtidepool_optim.so.0 => $root/lib/" <<<"$(ldd "$core")" ||
  fail "_core does not load the installed library: $(ldd "$core" | grep tidepool)"

small_config "$root/etc/tidepool/tidepoold.toml" "$scratch/tidepoold.toml"
mkdir -m 0750 "$scratch/run"
start_daemon "$root/bin/tidepoold" "$scratch/tidepoold.toml" "$scratch/run"
cd "$scratch"
OMP_NUM_THREADS=1 PYTHONPATH="$scratch/site" "$python" - "$socket" "$scratch/site" <<'PY'
import sys
import tidepool
import torch
assert tidepool.__file__.startswith(sys.argv[2]), tidepool.__file__
s = tidepool.Session(sys.argv[1], policy="cpu")
try:
    (info,) = s.register([("w", "f32", [4096], "param")])
    (view,) = s.acquire([info.id], write=True)
    view.copy_(torch.arange(4096, dtype=torch.float32))
    s.release([info.id], "hold")
    (host,) = s.acquire_on_host([info.id])
    assert torch.equal(host, torch.arange(4096, dtype=torch.float32))
    s.release([info.id])
    try:
        tidepool.Session(sys.argv[1], policy="fast")
        raise AssertionError("policy 'fast' accepted")
    except ValueError as e:
        assert "unknown policy 'fast'" in str(e), e
finally:
    s.close()
print("python against the installed libtidepool: ok,", tidepool.__file__)
PY
stop_daemon
echo "python installed test passed"
