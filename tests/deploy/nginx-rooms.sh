#!/usr/bin/env bash
# Room-mode scale-out through a real load balancer: two peerjsd nodes behind nginx running
# config/nginx.conf (ports and paths substituted). 100 rooms x 4 peers connect through nginx;
# the test checks that each room's peers land on one node, that the rooms spread over both
# nodes, that the peers signal each other, that --proxied sees the proxy's X-Forwarded-For
# entry, and that GET /peerjs/id works without a token. See tests/deploy/proxy_rooms.py.
#
# Usage: tests/deploy/nginx-rooms.sh [--proxy haproxy] [--rooms N]
#   --proxy haproxy runs the same checks through config/haproxy.cfg.
# Needs: cargo, python3 (standard library only), nginx (apt-get install -y nginx) or haproxy
# (apt-get install -y haproxy). Runs the proxy as the current user; as root nginx's workers
# switch to www-data and HAProxy to haproxy, as the shipped files say.
set -euo pipefail
cd "$(dirname "$0")/../.."

proxy=nginx
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[i]}" = --proxy ] && proxy=${args[i + 1]:-}
done
case "$proxy" in
  nginx | haproxy) ;;
  *) echo "FAIL unknown --proxy '$proxy' (nginx or haproxy)" >&2; exit 1 ;;
esac
PATH=$PATH:/usr/sbin:/sbin
if ! command -v "$proxy" >/dev/null; then
  echo "FAIL $proxy not found: apt-get install -y $proxy" >&2
  exit 1
fi
command -v python3 >/dev/null || { echo "FAIL python3 not found: apt-get install -y python3" >&2; exit 1; }

cargo build --release --bin peerjsd --quiet
exec python3 -B tests/deploy/proxy_rooms.py "$@"
