#!/usr/bin/env bash
# Installs what is missing (Debian packages via apt-get) and builds GenARM Serve.
#   BUILD_DIR   build folder (default: build)
#   GN_SANITIZE 1 = AddressSanitizer + UndefinedBehaviorSanitizer build
#   CMAKE_ARGS  extra arguments for cmake
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config xz-utils
          libjansson-dev libpcre2-dev libicu-dev libopenblas-dev
          libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libhiredis-dev redis-server
          libmicrohttpd-dev prometheus curl python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

build=${BUILD_DIR:-build}
args=(-DCMAKE_BUILD_TYPE=Release)
[ "${GN_SANITIZE:-0}" = 1 ] && args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGN_SANITIZE=ON)
# shellcheck disable=SC2206
cmake -S . -B "$build" "${args[@]}" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "$(nproc)"
