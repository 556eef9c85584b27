#!/usr/bin/env bash
# Installs what the Caf.js peer of spine-bench's `ca` workload needs, by package name:
#   - Debian's redis-server (the checkpoint store) and nodejs/npm, with apt-get, when missing;
#   - caf_core 0.4, caf_cli and their siblings from the npm registry, into node_modules here.
# spine-bench runs this when node_modules is missing or older than package.json; running it
# again is harmless.
set -euo pipefail
cd "$(dirname "$0")"

apt_install() {
    echo "cafjs/setup.sh: installing Debian's $* with apt-get" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    fi
}

command -v redis-server >/dev/null || apt_install redis-server
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm

# lzo (caf_redis compresses checkpoints with it) is a native addon: node-gyp builds it against
# the headers of the node installed here (/usr/include/node), not downloaded ones.
nodedir="$(dirname "$(dirname "$(command -v node)")")"
export npm_config_nodedir="$nodedir"
# `metrics` (required by caf_profiler, used only for profiling) is not served by the registry
# here: package.json takes it from ./metrics-stub and overrides every request for it.
npm install --no-audit --no-fund
if [ ! -e node_modules/lzo/build/Release/node_lzo.node ]; then
    npm rebuild lzo
fi
node -e "require('lzo'); require('caf_core'); require('caf_cli')" </dev/null
touch node_modules/.spine-bench-setup
echo "cafjs/setup.sh: ready (node $(node --version), $(redis-server --version | cut -d' ' -f1-3))" >&2
