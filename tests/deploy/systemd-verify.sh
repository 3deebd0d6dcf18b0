#!/usr/bin/env bash
# Checks config/peerjsd.service with systemd's own tools, without a running systemd:
#   - the directives the deployment relies on are there (Type=notify, the sandbox, the limits);
#   - `systemd-analyze verify` prints nothing at all (it exits 0 on unknown keys and bad
#     values and only warns, so any output counts as a failure);
#   - `systemd-analyze security --offline=yes` rates the unit's exposure at most 2.0.
# verify needs ExecStart's binary to exist, so it checks a copy of the unit in a temp dir with
# ExecStart pointing at target/release/peerjsd and this checkout's config/peerjsd.toml (the
# rest of the file unchanged).
#
# Not checked here: that the unit starts (no systemd PID 1 on this machine) — the notify
# protocol (READY=1/STOPPING=1) is tested with the server itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

pass() { printf 'ok   %s\n' "$*"; }
fail() {
  printf 'FAIL %s\n' "$*"
  exit 1
}

unit=config/peerjsd.service
if ! command -v systemd-analyze >/dev/null; then
  fail "systemd-analyze not found: apt-get install -y systemd"
fi

required=(
  Type=notify
  "ExecStart=/usr/local/bin/peerjsd --config /etc/peerjsd/peerjsd.toml"
  Restart=on-failure
  DynamicUser=yes
  NoNewPrivileges=yes
  ProtectSystem=strict
  ProtectHome=yes
  PrivateTmp=yes
  PrivateDevices=yes
  CapabilityBoundingSet=
  LimitNOFILE=1048576
  "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"
  SystemCallFilter=@system-service
  MemoryDenyWriteExecute=yes
  LockPersonality=yes
  RestrictNamespaces=yes
  ProtectKernelTunables=yes
  ProtectKernelModules=yes
  ProtectKernelLogs=yes
  ProtectControlGroups=yes
  KillSignal=SIGTERM
  Environment=RUST_LOG=info
  Environment=GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072
)
for line in "${required[@]}"; do
  [ "$(grep -cxF -- "$line" "$unit")" = 1 ] || fail "$unit: want exactly one line '$line'"
done
if grep -q '^AmbientCapabilities=' "$unit"; then fail "$unit: AmbientCapabilities must stay commented out"; fi
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' "$unit")
[ -n "$stop" ] && [ "$stop" -gt 10 ] ||
  fail "$unit: TimeoutStopSec must be above the server's 10s shutdown-timeout (got '${stop:-none}')"
pass "$unit: ${#required[@]} required directives present, no ambient capabilities, TimeoutStopSec=${stop}s > shutdown-timeout 10s"

cargo build --release --bin peerjsd --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/local/bin/peerjsd --config /etc/peerjsd/peerjsd.toml\$|ExecStart=$PWD/target/release/peerjsd --config $PWD/config/peerjsd.toml|" \
  "$unit" >"$tmp/peerjsd.service"
[ "$(grep -c "^ExecStart=$PWD/target/release/peerjsd " "$tmp/peerjsd.service")" = 1 ] ||
  fail "could not point ExecStart at the built binary"

verify() {
  local rc=0 out
  out=$(systemd-analyze verify --man=no "$1" 2>&1) || rc=$?
  if [ "$rc" != 0 ] || [ -n "$out" ]; then
    printf '%s\n' "$out"
    fail "systemd-analyze verify ($2): exit $rc, $(printf '%s' "$out" | grep -c '') line(s) of output (want exit 0, no output)"
  fi
}
verify "$tmp/peerjsd.service" "as shipped"
pass "systemd-analyze verify $unit: exit 0, no warnings ($(systemd-analyze --version | head -n 1))"

# The optional lines the comments offer (port < 1024, TLS key via LoadCredential) must be
# valid too once uncommented.
mkdir "$tmp/optional"
sed -E 's/^#((AmbientCapabilities|CapabilityBoundingSet|LoadCredential)=|Environment=PEERJSD_SSL)/\1/' \
  "$tmp/peerjsd.service" >"$tmp/optional/peerjsd.service"
[ "$(grep -cE '^(AmbientCapabilities|CapabilityBoundingSet=CAP|LoadCredential|Environment=PEERJSD_SSL)' "$tmp/optional/peerjsd.service")" = 5 ] ||
  fail "$unit: expected the 5 commented optional lines (AmbientCapabilities, CapabilityBoundingSet, 2x LoadCredential, Environment=PEERJSD_SSL*)"
verify "$tmp/optional/peerjsd.service" "optional lines uncommented"
pass "systemd-analyze verify with the optional lines uncommented (CAP_NET_BIND_SERVICE, LoadCredential TLS): exit 0, no warnings"

rc=0
out=$(systemd-analyze security --offline=yes --threshold=20 "$tmp/peerjsd.service" 2>&1) || rc=$?
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for peerjsd.service: \([0-9.]*\).*/\1/p')
if [ "$rc" != 0 ] || [ -z "$score" ]; then
  printf '%s\n' "$out"
  fail "systemd-analyze security: exit $rc, exposure '${score:-?}' (want at most 2.0)"
fi
pass "systemd-analyze security --offline: exposure $score (at most 2.0)"
