#!/usr/bin/env bash
# Debian's chromium and chromium-driver for the browser tests (nothing downloads a browser of
# its own). Installed with apt where this user may (root, or password-less sudo); otherwise
# the tests that need them say so and skip, except under CI=true where they fail.
set -euo pipefail
if command -v chromium > /dev/null && command -v chromedriver > /dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ]; then sudo=(); elif sudo -n true 2> /dev/null; then sudo=(sudo -n); else
  echo "chromium/chromedriver missing and apt needs root: apt-get install chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# An old package index may name versions the mirror no longer has: refresh it once on failure.
"${sudo[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver > /dev/null \
  || { "${sudo[@]}" apt-get update -q > /dev/null \
       && "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver > /dev/null; }
