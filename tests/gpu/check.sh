#!/usr/bin/env bash
# check.sh — the one GPU check (issue 4). Run from anywhere on a machine with
# an NVIDIA GPU, nvcc and CMake:
#
#   tests/gpu/check.sh            # build, every GPU test, the decode benchmark
#   GN_CHECK_QUICK=1 tests/gpu/check.sh   # skip the ~1B model test, short bench
#
# Steps: (0) if the build's libraries (jansson, pcre2, ZeroMQ, protobuf-c,
# hiredis, libmicrohttpd, pkg-config) are missing and build-gpudeps/ holds
# .deb files (tests/gpu/fetch-deps.sh), unpack them into a private prefix,
# keeping only the libraries this machine lacks, with protoc-c and
# redis-server; (1) configure a Release build with CUDA in build-gpu/, with
# the service where its libraries and programs are there; (2) build the GPU
# targets (and the service's programs), -j16; (3) ctest -L gpu (with the
# service: test_cuda_service, the workers on cuda:0); (4) bench_gpu.
# (3b) the GPU tests once more with PDL and the runner's graphs off (ops and
# tiny models); (5) with the service: the real base_worker, reward_worker and
# coordinator on the GPU (bench/bench_service.py: a 7B-shape base and a
# 1B-shape ARM, 128,256 columns), guided tokens/s through the service at
# batch 1/8/32/64 beside bench_gpu's in-process two-stream guided figures.
# Everything is printed; logs (check, configure, build, ctest, fallback_*,
# bench, service_bench) go to $OUT (when set) or build-gpu/logs.
# Each phase gets what is left of GN_CHECK_BUDGET (default 470 s, keeping
# time in reserve for the later phases), so the script ends within ~8 minutes.
# Exit status: 0 when everything built, ran and passed, 1 otherwise (a GPU
# test or the bench skipping for want of a GPU counts as a failure here).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="${GN_CHECK_BUILD:-$ROOT/build-gpu}"
LOGS="${OUT:-$BUILD/logs}"
JOBS="${GN_CHECK_JOBS:-16}"
QUICK="${GN_CHECK_QUICK:-0}"
mkdir -p "$BUILD" "$LOGS"
exec > >(tee -a "$LOGS/check.log") 2>&1

T0=$(date +%s)
BUDGET="${GN_CHECK_BUDGET:-470}" # seconds for the whole script; phases get what is left
say() { printf '\n=== [%4ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }
# left RESERVE CAP: seconds a phase may take, keeping RESERVE for later phases.
left() {
  local l=$(( BUDGET - ($(date +%s) - T0) - $1 ))
  [ "$l" -gt "$2" ] && l=$2
  [ "$l" -lt 20 ] && l=20
  echo "$l"
}
STATUS=0
SUMMARY=()
note() { SUMMARY+=("$*"); }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -5 || true
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
nvcc --version 2>&1 | tail -2 || echo "nvcc: not found"
cmake --version 2>&1 | head -1 || echo "cmake: not found"
echo "cores: $(nproc), repo: $ROOT, build: $BUILD, logs: $LOGS"

# ---- (0) library dependencies -------------------------------------------------
# The pkg-config modules the CMake files require.
MODS=$(grep -rhoE --include=CMakeLists.txt --exclude-dir='build*' \
         'pkg_check_modules\([A-Za-z0-9_]+ +REQUIRED +(IMPORTED_TARGET +)?[^)]*\)' "$ROOT" |
       sed -E 's/pkg_check_modules\([A-Za-z0-9_]+ +REQUIRED +(IMPORTED_TARGET +)?//; s/\)//' |
       tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' ')
PC=pkg-config
command -v pkg-config >/dev/null 2>&1 || PC=""
have_deps() { [ -n "$PC" ] && $PC --exists $MODS 2>/dev/null; }
echo "pkg-config modules required: $MODS"
if ! have_deps || [ "${GN_CHECK_FORCE_DEPS:-0}" = 1 ]; then
  DEBS="$ROOT/build-gpudeps"
  PREFIX="${TMPDIR:-/tmp}/gn-deps"
  if ls "$DEBS"/*.deb >/dev/null 2>&1; then
    say "unpacking $(ls "$DEBS"/*.deb | wc -l) .deb files from build-gpudeps/ into $PREFIX"
    rm -rf "$PREFIX" && mkdir -p "$PREFIX"
    for f in "$DEBS"/*.deb; do
      if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$f" "$PREFIX"
      else # no dpkg: a .deb is an ar archive holding data.tar.*
        (d=$(mktemp -d) && cd "$d" && ar x "$f" && tar -xf data.tar.* -C "$PREFIX"; rm -rf "$d")
      fi
    done
    LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu"
    # A library this machine already has (the same soname) is used from the
    # system: drop the unpacked copy, so that nothing is shadowed.
    SYS_SONAMES=$({ ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | awk 'NR > 1 {print $1}')
    dropped=0
    for f in "$LIBDIR"/lib*.so.*; do
      [ -e "$f" ] || [ -L "$f" ] || continue
      if grep -qxF "$(basename "$f")" <<<"$SYS_SONAMES"; then rm -f "$f"; dropped=$((dropped + 1)); fi
    done
    echo "libraries already on this machine (used from the system): $dropped"
    export PATH="$PATH:$PREFIX/usr/bin" # protoc-c, redis-server where the machine has none
    for pc in "$LIBDIR"/pkgconfig/*.pc "$PREFIX"/usr/share/pkgconfig/*.pc; do
      [ -f "$pc" ] && sed -i -E "s|^(prefix *= *)/usr *\$|\1$PREFIX/usr|" "$pc"
    done
    export PKG_CONFIG_PATH="$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    # The libraries' own dependencies (libicuuc -> libicudata) are found
    # through LD_LIBRARY_PATH; only sonames the system lacks are left there.
    export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LIBRARY_PATH="$LIBDIR${LIBRARY_PATH:+:$LIBRARY_PATH}"
    if [ -z "$PC" ] || [ "${GN_CHECK_FORCE_DEPS:-0}" = 1 ]; then
      [ -x "$PREFIX/usr/bin/pkgconf" ] && PC="$PREFIX/usr/bin/pkgconf" && export PKG_CONFIG="$PC"
    fi
  else
    echo "warning: pkg-config modules missing and no build-gpudeps/*.deb (run tests/gpu/fetch-deps.sh where there is network)"
  fi
  for m in $MODS; do echo "  $m: $($PC --modversion "$m" 2>&1) ($PC)"; done
fi

# ---- (1) configure -----------------------------------------------------------
# The service (workers, coordinator) too where its libraries, protoc-c and
# redis-server are here: test_cuda_service runs it on the GPU.
SERVICE=OFF
SVC_MODS="libzmq libprotobuf-c hiredis libmicrohttpd"
if [ -n "$PC" ] && $PC --exists $SVC_MODS 2>/dev/null && command -v protoc-c >/dev/null 2>&1 &&
   command -v redis-server >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1; then
  SERVICE=ON
else
  echo "service not built (needs $SVC_MODS, protoc-c, redis-server, python3): test_cuda_service will not run"
  note "service on the GPU: not built here (libraries, protoc-c, redis-server or python3 missing)"
fi
say "configure (Release, CUDA, service $SERVICE)"
CMAKE_ARGS=(-S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGN_CUDA=ON -DGN_SERVICE=$SERVICE)
if command -v nvcc >/dev/null 2>&1; then
  CMAKE_ARGS+=(-DCMAKE_CUDA_COMPILER="$(command -v nvcc)")
  # The CUDA runtime and cuBLAS next to this nvcc, for the test binaries.
  for d in "$(dirname "$(command -v nvcc)")/../lib64" "$(dirname "$(command -v nvcc)")/../lib"; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$(cd "$d" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" && break
  done
fi
# A fresh build directory uses make when there is one, else ninja.
if [ ! -f "$BUILD/CMakeCache.txt" ] && ! command -v make >/dev/null 2>&1 && command -v ninja >/dev/null 2>&1; then
  CMAKE_ARGS+=(-G Ninja)
fi
[ -n "${PKG_CONFIG:-}" ] && CMAKE_ARGS+=(-DPKG_CONFIG_EXECUTABLE="$PKG_CONFIG")
if ! timeout 120 cmake "${CMAKE_ARGS[@]}" 2>&1 | tee "$LOGS/configure.log" | tail -25; then
  say "configure FAILED (full log: $LOGS/configure.log)"
  tail -60 "$LOGS/configure.log"
  exit 1
fi
grep -q "CUDA backend ON" "$LOGS/configure.log" || { echo "CUDA backend is OFF: nvcc not found"; exit 1; }

# ---- (2) build ---------------------------------------------------------------
say "build GPU targets (-j$JOBS)"
BUILT=()
TARGETS=(genarm_backend_cuda test_cuda_ops test_cuda_model test_cuda_lora_adapters genarm test_cuda_cli)
[ "$SERVICE" = ON ] && TARGETS+=(genarm-make-model genarm-admin base_worker reward_worker coordinator)
for t in "${TARGETS[@]}" bench_gpu; do
  if timeout "$(left 200 300)" cmake --build "$BUILD" -j "$JOBS" --target "$t" >"$BUILD/build_$t.log" 2>&1; then
    echo "built $t"
    BUILT+=("$t")
  else
    echo "BUILD FAILED: $t (last lines of the build log):"
    grep -E "error|Error" "$BUILD/build_$t.log" | head -20
    tail -15 "$BUILD/build_$t.log"
    note "build $t: FAILED"
    STATUS=1
  fi
  cat "$BUILD/build_$t.log" >>"$LOGS/build.log"
done
[[ " ${BUILT[*]} " == *" genarm_backend_cuda "* ]] || { say "the CUDA backend did not build"; exit 1; }

# ---- (3) GPU tests -----------------------------------------------------------
say "GPU tests: ctest -L gpu"
[ "$QUICK" = 1 ] && export GN_TEST_NO_1B=1
CT_LIMIT=$(left 75 400)
echo "(time limit ${CT_LIMIT}s)"
( cd "$BUILD" && timeout "$CT_LIMIT" ctest -L gpu --output-on-failure -V 2>&1 ) | tee "$LOGS/ctest.log"
CT=$(grep -E "tests passed|tests failed" "$LOGS/ctest.log" | tail -1)
note "ctest -L gpu: ${CT:-no summary (timed out?)}"
grep -E "^[0-9]+: [0-9]+ passed, [0-9]+ failed" "$LOGS/ctest.log" | while read -r l; do echo "  $l"; done
if ! grep -q "100% tests passed" "$LOGS/ctest.log"; then STATUS=1; fi
# On the machine this script is for, a skipped GPU test is a failure.
if grep -qE "Skipped|Not Run" "$LOGS/ctest.log"; then
  note "some GPU tests were skipped or not run (no GPU visible?): see ctest.log"
  STATUS=1
fi

# ---- (3b) the same without PDL, the runner's graphs and the fused ops --------
# Programmatic dependent launch, recorded decode steps and the fused decode
# ops are on by default; this pass (ops, tiny models) switches them off, so
# that a failure above that is absent here points at them (then
# GN_CUDA_PDL=0 / GN_RUNNER_GRAPHS=0 / GN_CUDA_FUSE=0 are the workarounds
# while it is fixed).
say "GPU tests again with GN_CUDA_PDL=0 GN_RUNNER_GRAPHS=0 GN_CUDA_FUSE=0 (no ~1B model)"
FB_LIMIT=$(left 60 120)
FB_OK=1
for t in test_cuda_ops test_cuda_model; do
  if [ -x "$BUILD/tests/gpu/$t" ]; then
    ( cd "$BUILD/tests/gpu" && GN_CUDA_PDL=0 GN_RUNNER_GRAPHS=0 GN_CUDA_FUSE=0 GN_TEST_NO_1B=1 timeout "$FB_LIMIT" "./$t" ) \
      >"$LOGS/fallback_$t.log" 2>&1
    rc=$?
    echo "  $t (PDL, graphs, fused ops off): $(tail -1 "$LOGS/fallback_$t.log") [exit $rc]"
    grep -E "^FAIL" "$LOGS/fallback_$t.log" | head -10
    [ "$rc" = 0 ] || FB_OK=0
  fi
done
note "GPU tests with PDL, graphs and fused ops off: $([ $FB_OK = 1 ] && echo passed || echo FAILED)"
[ $FB_OK = 1 ] || STATUS=1

# ---- (4) benchmark -----------------------------------------------------------
if [[ " ${BUILT[*]} " == *" bench_gpu "* ]]; then
  say "bench_gpu"
  BARGS=()
  [ "$QUICK" = 1 ] && BARGS+=(--quick)
  B_LIMIT=$(left 5 300)
  echo "(time limit ${B_LIMIT}s)"
  GN_BENCH_DIR="${TMPDIR:-/tmp}" timeout "$B_LIMIT" "$BUILD/bench/bench_gpu" "${BARGS[@]}" 2>&1 | tee "$LOGS/bench.log"
  rc=${PIPESTATUS[0]}
  case "$rc" in
    0) note "bench_gpu: done" ;;
    77) note "bench_gpu: skipped (no GPU visible)"; STATUS=1 ;;
    *) note "bench_gpu: exit $rc"; STATUS=1 ;;
  esac
else
  note "bench_gpu: not built"
fi

# ---- (5) the service on the GPU: guided tokens/s through the real processes -----
# bench_service.py makes the random models (a 7B-shape base, a 1B-shape ARM,
# Llama-3 tokenizer), starts redis-server, the workers on cuda:0 and the
# coordinators, and prints tokens/s per batch next to `genarm generate -n B`.
# Compare its sparse rows with bench_gpu's "ARM on its own stream" line above
# (goal: at least 0.9x at every batch). Shapes shrink (fewer layers) when
# little time is left; the line printed says which ran.
if [ "$SERVICE" = ON ] && [[ " ${BUILT[*]} " == *" coordinator "* ]]; then
  SB_LIMIT=$(left 5 400)
  LAYERS=32; ARM_LAYERS=22
  if [ "$QUICK" = 1 ] || [ "$SB_LIMIT" -lt 240 ]; then LAYERS=8; ARM_LAYERS=6; fi
  say "service on the GPU: bench_service.py (base 4096x$LAYERS, ARM 2048x$ARM_LAYERS, 128256 columns)"
  echo "(time limit ${SB_LIMIT}s)"
  TMPDIR="${TMPDIR:-/tmp}" timeout "$SB_LIMIT" python3 "$ROOT/bench/bench_service.py" --build "$BUILD" \
    --device cuda:0 --vocab 128256 --dim 4096 --layers "$LAYERS" --ffn 11008 --heads 32 --kv-heads 8 \
    --arm-shape "2048,$ARM_LAYERS,5632,32,4" --head-std 0.05 --batches 1,8,32,64 --rows sparse,f32 \
    --tokens 32 --threads 4 --sample-threads 4 --transport-batch 0 2>&1 | tee "$LOGS/service_bench.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then note "service bench on the GPU: done (service_bench.log)"
  else note "service bench on the GPU: exit $rc"; STATUS=1; fi
else
  note "service bench on the GPU: not run (the service was not built)"
fi

# ---- summary (last, so the tail of the output carries it) ---------------------
say "summary"
if [ -s "$LOGS/bench.log" ]; then
  echo "bench_gpu (repeated from above):"
  grep -vE '^\s*$' "$LOGS/bench.log" | sed 's/^/  | /'
fi
if [ -s "$LOGS/service_bench.log" ]; then
  echo "bench_service on the GPU (repeated from above):"
  grep -E '^(GenARM|rows|sparse|f32) ' "$LOGS/service_bench.log" | sed 's/^/  | /'
fi
for s in "${SUMMARY[@]}"; do echo "  $s"; done
if [ -f "$LOGS/ctest.log" ]; then
  grep -E "^\s*[0-9]+/[0-9]+ Test +#[0-9]+:" "$LOGS/ctest.log" | sed 's/^/  /'
fi
echo "  logs: $LOGS"
echo "  total $(( $(date +%s) - T0 )) s, status $STATUS"
sleep 1 # let tee drain
exit $STATUS
