#!/usr/bin/env bash
# Sets up (installs what is missing, builds) and runs every test with ctest.
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${BUILD_DIR:-build}
cd "$build"
ctest --output-on-failure -j "$(nproc)" "$@"
