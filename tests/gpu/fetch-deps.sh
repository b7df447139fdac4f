#!/usr/bin/env bash
# fetch-deps.sh — run on a development machine WITH network access (Debian
# bookworm, the build's -dev packages installed) before sending the tree to a
# GPU machine that cannot reach a package registry. Downloads into
# build-gpudeps/ (ignored by git: /build*/) the .deb files of
#   - pkg-config itself (pkgconf),
#   - every pkg-config module the CMake files require (pkg_check_modules),
#     found through the -dev package that owns its .pc file,
#   - the runtime libraries those -dev packages depend on directly,
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
PKGS+=("$@")
cd "$DEST"
printf '%s\n' "${PKGS[@]}" | sort -u | xargs apt-get download 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
ls -la "$DEST"
du -sh "$DEST"
