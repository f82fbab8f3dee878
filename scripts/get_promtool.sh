#!/usr/bin/env bash
# promtool for the alert-rule tests: on PATH already, or unpacked from Debian's prometheus
# package into .cache/promtool (no root, no service installed). Prints its path.
set -euo pipefail
if command -v promtool > /dev/null; then command -v promtool; exit 0; fi
dest="$(cd "$(dirname "$0")/.." && pwd)/.cache/promtool"
if [ ! -x "$dest/promtool" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download prometheus > /dev/null 2>&1 && dpkg-deb -x prometheus_*.deb x)
  mkdir -p "$dest"
  cp "$work/x/usr/bin/promtool" "$dest/promtool"
fi
echo "$dest/promtool"
