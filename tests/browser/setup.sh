#!/usr/bin/env bash
# Installs what the browser test (tests/tests/browser.rs) needs, by package name: Debian's
# `chromium`, with apt-get, when it is missing. The test runs this itself when it finds no
# chromium; running it again is harmless.
set -euo pipefail

if command -v chromium >/dev/null; then
    echo "browser/setup.sh: $(chromium --version 2>/dev/null || echo chromium) is installed" >&2
    exit 0
fi
echo "browser/setup.sh: installing Debian's chromium with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium; then
    apt-get update
    apt-get install -y --no-install-recommends chromium
fi
chromium --version >&2
