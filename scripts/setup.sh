#!/usr/bin/env bash
# Installs what tidepool needs to build and test, if it is missing.
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  dpkg-dev fakeroot lintian strace systemd  # make package, tests/packaging
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libgoogle-glog-dev libtomlplusplus-dev libcivetweb-dev libsystemd-dev
  libgloo-dev prometheus python3-yaml python3-dev python3-venv
  prometheus-cpp-dev nlohmann-json3-dev libcurl4-openssl-dev libyaml-cpp-dev
)
# `setup.sh fuzz` (make fuzz): clang and its libFuzzer as well.
if [ "${1:-}" = fuzz ]; then
  packages+=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "tidepool: installing ${missing[*]}"
if ! command -v apt-get >/dev/null; then
  echo "tidepool: apt-get not found; install these packages by hand: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "tidepool: need root to install ${missing[*]}; run 'sudo $0' or install them by hand" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "tidepool: apt-get update failed; trying the cached package lists" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
