#!/usr/bin/env bash
# fetch-deps.sh — run on a development machine WITH network access (Debian
# bookworm, the build's -dev packages installed) before sending the tree to a
# GPU machine that cannot reach a package registry. Downloads into
# build-gpudeps/ (ignored by git: /build*/) the .deb files of
#   - pkg-config itself (pkgconf),
#   - every pkg-config module the CMake files require (pkg_check_modules),
#     found through the -dev package that owns its .pc file,
#   - the programs the service build and its GPU test need: protoc-c
#     (protobuf-c-compiler) and redis-server (with redis-tools),
#   - the runtime libraries all of these depend on, recursively (not libc,
#     libgcc or libstdc++; tests/gpu/check.sh drops any whose soname the GPU
#     machine already has),
#   - any extra package named on the command line.
# Pass the folder along (e.g. the device tool's carry: ["build-gpudeps"]);
# tests/gpu/check.sh unpacks it into a private prefix only when the GPU
# machine lacks a module.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="$ROOT/build-gpudeps"
mkdir -p "$DEST"
MODS=$(grep -rhoE --include=CMakeLists.txt --exclude-dir='build*' \
         'pkg_check_modules\([A-Za-z0-9_]+ +REQUIRED +(IMPORTED_TARGET +)?[^)]*\)' "$ROOT" |
       sed -E 's/pkg_check_modules\([A-Za-z0-9_]+ +REQUIRED +(IMPORTED_TARGET +)?//; s/\)//' | tr ' ' '\n' |
       grep -v '^$' | sort -u)
PKGS=(pkgconf pkgconf-bin libpkgconf3)
for m in $MODS; do
  pc=$(pkg-config --path "$m") || { echo "module $m: not installed here (apt-get install its -dev package)"; exit 1; }
  dev=$(dpkg -S "$pc" | head -1 | cut -d: -f1)
  echo "module $m -> $dev"
  PKGS+=("$dev")
  for dep in $(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                 --no-replaces --no-enhances "$dev" | awk '/^ *Depends: [a-z]/{print $2}'); do
    case "$dep" in lib*-dev|libc6*|libgcc*|libstdc++*) ;; lib*) PKGS+=("$dep") ;; esac
  done
done
PKGS+=(protobuf-c-compiler redis-server redis-tools "$@")
# The runtime libraries of everything above, recursively.
todo=("${PKGS[@]}")
declare -A seen=()
for p in "${PKGS[@]}"; do seen[$p]=1; done
while [ ${#todo[@]} -gt 0 ]; do
  p=${todo[0]}
  todo=("${todo[@]:1}")
  for dep in $(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                 --no-replaces --no-enhances "$p" 2>/dev/null | awk '/^ *(Pre)?Depends: [a-z]/{print $2}'); do
    case "$dep" in lib*-dev|libc6|libc6:*|libgcc*|libstdc++*) continue ;; lib*) ;; *) continue ;; esac
    [ -n "${seen[$dep]:-}" ] && continue
    seen[$dep]=1
    PKGS+=("$dep")
    todo+=("$dep")
  done
done
cd "$DEST"
printf '%s\n' "${PKGS[@]}" | sort -u | xargs apt-get download 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
ls -la "$DEST"
du -sh "$DEST"
