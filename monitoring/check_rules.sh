#!/bin/sh
# Checks and unit-tests the Prometheus rules with promtool (Debian package
# prometheus). Exit 77 (ctest: skipped) when promtool is missing.
set -e
here=$(cd "$(dirname "$0")" && pwd)
command -v promtool >/dev/null 2>&1 || { echo "skipped: promtool is missing"; exit 77; }
promtool check rules "$here/prometheus/genarm_rules.yml"
cd "$here/tests" && promtool test rules rules_test.yml
echo "1 passed, 0 failed"
