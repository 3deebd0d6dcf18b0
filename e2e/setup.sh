#!/usr/bin/env bash
# Installs what the e2e browser suite needs on a fresh Debian machine that reaches only
# the package registries: Debian's chromium package (never a downloaded browser build),
# Debian's coturn, and the exact npm packages of package-lock.json. Safe to run again; run
# as root (CI does).
set -euo pipefail
cd "$(dirname "$0")"

# chromium for the pages; coturn (turnserver) for the TURN checks, which start their own
# coturn on loopback (installing the package starts no service); nats-server for the cluster
# group, which runs two peerjsd nodes on a real NATS server.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v turnserver >/dev/null || missing+=(coturn)
[ -x /usr/sbin/nats-server ] || missing+=(nats-server)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "e2e/setup.sh: node and npm (Node >= 20) are required" >&2
  exit 1
fi

# npm ci installs exactly the lockfile (it replaces node_modules each time).
npm ci --no-audit --no-fund
