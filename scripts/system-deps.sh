#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when missing.
# As root (CI, a fresh lab machine) it installs them; otherwise it says what to install.
set -euo pipefail
declare -A package_of=(
    [prometheus]=prometheus
    [promtool]=prometheus
    [amtool]=prometheus-alertmanager
    [docker-compose]=docker-compose
    [chromium]=chromium
)
missing=()
for binary in "${!package_of[@]}"; do
    command -v "$binary" >/dev/null 2>&1 || missing+=("${package_of[$binary]}")
done
((${#missing[@]})) || exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "system-deps: missing Debian packages: ${missing[*]}" >&2
    echo "system-deps: install them with: sudo apt-get install ${missing[*]} (tests that need them will be skipped)" >&2
fi
