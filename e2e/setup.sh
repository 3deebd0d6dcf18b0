#!/usr/bin/env bash
# Installs what the e2e browser suite needs on a fresh Debian machine that reaches only
# the package registries: Debian's chromium package (never a downloaded browser build)
# and the exact npm packages of package-lock.json. Safe to run again; run as root (CI does).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The cluster group runs two peerjsd nodes on a real NATS server.
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
